"""Lightning modules: self-supervised pretraining tasks and their shared base."""
