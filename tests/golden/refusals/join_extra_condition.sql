SELECT COUNT(*) FROM bank.loans l JOIN insurer.policies p ON l.customer_id = p.customer_id OR p.open_claim = 1
