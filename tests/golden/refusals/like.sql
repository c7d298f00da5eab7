SELECT COUNT(*) FROM bank.customers WHERE region LIKE branch
