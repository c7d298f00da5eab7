SELECT COUNT(*) FROM bank.customers c JOIN bank.loans l ON c.customer_id = l.customer_id WHERE c.region = l.term_months
