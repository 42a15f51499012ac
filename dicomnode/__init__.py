"""dicomnode: a DICOM node for acute brain haemorrhage on head CT."""

__version__ = "0.1.0"
