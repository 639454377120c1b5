"""The procedural shapes world: generated scenes with exact masks and names, the data the
embedded model is trained and evaluated on (ROS-free)."""
