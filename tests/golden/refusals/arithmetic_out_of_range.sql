SELECT COUNT(*) FROM bank.customers WHERE age * 1e35 > 1
