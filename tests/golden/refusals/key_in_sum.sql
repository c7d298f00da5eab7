SELECT SUM(customer_id) FROM bank.loans
