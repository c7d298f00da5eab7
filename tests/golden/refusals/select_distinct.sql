SELECT DISTINCT region FROM bank.customers
