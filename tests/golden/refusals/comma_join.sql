SELECT COUNT(*) FROM bank.loans l, insurer.policies p WHERE l.customer_id = p.customer_id
