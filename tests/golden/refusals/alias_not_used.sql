SELECT COUNT(*) FROM bank.loans l WHERE loans.amount > 5
