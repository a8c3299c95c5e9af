"""selfsup-models: backbones, necks, heads and memories for selfsup."""
