SELECT COUNT(*) FROM bank.loans l JOIN insurer.policies p ON l.customer_id = p.customer_id WHERE 2 < l.amount / (p.premium + 1)
