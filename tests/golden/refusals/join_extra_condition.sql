SELECT COUNT(*) FROM bank.loans l JOIN insurer.policies p ON l.customer_id = p.customer_id AND p.open_claim = 1
