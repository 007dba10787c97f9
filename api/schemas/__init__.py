"""Request and response bodies of the REST API, one module per resource (JobSpec, the job request, lives in
mol_engine.spec); ``common`` holds what they share: timestamps, the one error shape every route answers with, and
what the OpenAPI document says of the bodies that routes read themselves (to word their own errors or to stream
them to disk)."""
