SELECT COUNT(*) FROM bank.customers WHERE UPPER(region) = 'NORTH'
