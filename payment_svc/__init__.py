"""payment_svc: owns customer balances; charges for orders and refunds cancelled ones."""
