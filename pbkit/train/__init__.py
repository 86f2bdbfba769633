"""Training: the loop base training, sparse training and finetuning share, with recorded recipes."""
