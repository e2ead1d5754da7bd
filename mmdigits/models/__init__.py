"""The model zoo: audio and image encoders, fusions, the LightningModule; built by name from ``conf/``."""
