SELECT SUM((l.amount + p.premium) * p.open_claim) FROM bank.loans l JOIN insurer.policies p ON l.customer_id = p.customer_id
