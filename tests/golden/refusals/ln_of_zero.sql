SELECT SUM(LN(defaulted)) FROM bank.loans
