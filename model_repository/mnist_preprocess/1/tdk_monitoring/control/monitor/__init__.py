"""Model monitoring: what the served model sees and answers, drift against a reference, accuracy against
late labels, and the feedback that fine-tuning trains on. `contract` holds what the writers (inside
Triton) and the readers (the monitor service, fine-tuning) agree on."""
