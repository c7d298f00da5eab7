SELECT COUNT(*) FROM bank.customers WHERE region = north
