"""What the routes share, kept out of api/routes/ so that no route module imports another: handing work to the
workers, the checks a submitted job passes, checkpoints and the models built on them, datasets, health probes."""
