SELECT MEDIAN(l.amount * p.premium + p.premium) FROM bank.loans l JOIN insurer.policies p ON l.customer_id = p.customer_id
