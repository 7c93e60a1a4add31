"""What SAEs are evaluated on: base models (located and booted), the offline corpus, cached model
activations and synthetic model organisms."""
