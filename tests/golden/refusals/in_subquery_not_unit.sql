SELECT COUNT(*) FROM bank.customers c WHERE c.customer_id IN (SELECT l.amount FROM bank.loans l)
