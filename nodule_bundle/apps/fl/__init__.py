"""Federated training with NVIDIA FLARE: FedAvg over hospitals, each running the bundle's own
train/evaluate configs through MONAI's ``MonaiAlgo``; only weights and metrics leave a site."""
