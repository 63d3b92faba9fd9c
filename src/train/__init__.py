"""Training orchestration: one trainer builder, the pretraining + finetuning pipeline, semi-supervised
finetuning, and the callbacks every training phase gets (online probe, resume state, fault guard)."""
