"""Training: the LightningModule, the TorchRec strategy, sharding, checkpoints, metrics, the run loop."""
