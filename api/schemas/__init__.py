"""Request and response shapes, one module per resource; requests are strict, unknown fields rejected."""
