SELECT COUNT(*) FROM bank.customers WHERE region = 5
