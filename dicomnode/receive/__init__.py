"""Receive stage: the DICOM SCP, durable instance storage and access control."""
