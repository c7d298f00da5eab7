SELECT COUNT(*) FROM bank.loans l JOIN insurer.policies p ON l.customer_id = p.customer_id WHERE l.amount / (p.premium + 1) > p.open_claim
