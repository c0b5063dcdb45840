"""inventory_svc: owns stock; reserves an order's items or none, releases them on cancel."""
