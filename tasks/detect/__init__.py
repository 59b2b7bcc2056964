"""Object detection: RetinaNet (FPN), SSD300 and SSDLite heads, post-processing and losses."""
