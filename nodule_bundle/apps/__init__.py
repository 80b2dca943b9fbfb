"""Applications on top of the bundle (the runtime never imports them): CLI, demo, batch, benchmarks, PACS, MONAI Deploy, MONAI Label, sharing, federated."""
