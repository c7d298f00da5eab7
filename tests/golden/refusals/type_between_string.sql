SELECT COUNT(*) FROM bank.loans WHERE amount BETWEEN 'a' AND 5
