"""TorchRec/FBGEMM CTR models trained by Lightning, sharded by DistributedModelParallel."""
