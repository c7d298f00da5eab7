SELECT COUNT(*) FROM bank.loans l JOIN insurer.policies p ON l.customer_id = p.customer_id WHERE l.term_months = p.open_claim
