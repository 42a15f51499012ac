"""Segment stage: backends behind one interface (unet, blast_ct, nnunet, threshold)."""
