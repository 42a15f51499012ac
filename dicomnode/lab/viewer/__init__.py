"""The viewer rig: Orthanc with DICOMweb, OHIF's prebuilt viewer on one loopback origin, the node,
and Debian's headless Chromium driven over the DevTools protocol (docs/viewer.md).

Lab code: tests, benchmarks and ``make viewer`` use it; serving never imports it.
"""
