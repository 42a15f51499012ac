"""Measure stage: volumes, ABC/2, cortical involvement, site, density and shape markers."""
