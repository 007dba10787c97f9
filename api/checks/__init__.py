"""Checks that turn client input into trusted records, one module each: an upload's purpose and file name
(``names``), a stored file's contents (``dataset_contents``), what a job spec refers to (``job_references``) and
what it asks of the workers (``job_resources``)."""
