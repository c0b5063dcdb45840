"""order_svc: owns orders; starts the saga and decides each order's outcome."""
