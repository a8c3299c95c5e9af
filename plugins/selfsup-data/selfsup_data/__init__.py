"""selfsup-data: data sources, datasets, transforms and GPU-side augmentation for selfsup."""
