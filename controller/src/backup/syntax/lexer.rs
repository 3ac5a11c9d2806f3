//! psql's lexer, reduced to what a dump check needs (modelled on `psqlscan.l`): where
//! statements end, where quotes, dollar bodies and comments begin and end, and where a
//! backslash starts a meta-command. Separate because it is a small state machine with rules of
//! its own (standard_conforming_strings, `BEGIN ATOMIC` bodies) that knows nothing about
//! what the dump check does with its events.

/// What the lexer met.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event {
    EndOfLine,
    /// A semicolon that ends a statement, at this offset.
    Semicolon(usize),
    /// A backslash outside quotes and comments, at this offset.
    Backslash(usize),
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) enum State {
    #[default]
    Normal,
    /// In '...'; `escapes` for E'...' (or any string without standard_conforming_strings).
    Quote {
        escapes: bool,
    },
    DoubleQuote,
    /// In a dollar-quoted string; the delimiter, such as `$$` or `$body$`.
    Dollar(String),
    /// In a /* comment */, at this nesting depth.
    Comment(u32),
}

/// A statement's first word, for the two statements the reader must act on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum First {
    #[default]
    None,
    Copy,
    Set,
    Other,
}

/// psql's lexer, reduced to what finds statement ends and meta-commands (`psqlscan.l`).
#[derive(Debug)]
pub(super) struct Lexer {
    pub(super) state: State,
    pub(super) paren_depth: u32,
    /// psql's heuristic for `BEGIN ATOMIC ... END` bodies of CREATE FUNCTION / PROCEDURE,
    /// whose semicolons do not end the statement.
    pub(super) begin_depth: u32,
    pub(super) identifiers: [u8; 4],
    pub(super) identifier_count: usize,
    /// Whether the statement has begun (anything but blanks and comments).
    pub(super) has_content: bool,
    pub(super) first: First,
    pub(super) standard_strings: bool,
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer {
            state: State::Normal,
            paren_depth: 0,
            begin_depth: 0,
            identifiers: [0; 4],
            identifier_count: 0,
            has_content: false,
            first: First::None,
            standard_strings: true,
        }
    }
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// The length of a dollar-quote delimiter (`$$`, `$tag$`) at the start of `text`, if any.
fn dollar_delimiter(text: &[u8]) -> Option<usize> {
    let mut i = 1;
    if text.get(i).is_some_and(|&b| is_ident_start(b)) {
        i += 1;
        while text
            .get(i)
            .is_some_and(|&b| is_ident_start(b) || b.is_ascii_digit())
        {
            i += 1;
        }
    }
    (text.get(i) == Some(&b'$')).then_some(i + 1)
}

impl Lexer {
    pub(super) fn scan(&mut self, line: &[u8], mut i: usize) -> Event {
        while i < line.len() {
            match &mut self.state {
                State::Quote { escapes } => {
                    let escapes = *escapes;
                    while i < line.len() {
                        match line[i] {
                            b'\\' if escapes => i += 2,
                            b'\'' if line.get(i + 1) == Some(&b'\'') => i += 2,
                            b'\'' => {
                                self.state = State::Normal;
                                i += 1;
                                break;
                            }
                            _ => i += 1,
                        }
                    }
                }
                State::DoubleQuote => {
                    while i < line.len() {
                        match line[i] {
                            b'"' if line.get(i + 1) == Some(&b'"') => i += 2,
                            b'"' => {
                                self.state = State::Normal;
                                i += 1;
                                break;
                            }
                            _ => i += 1,
                        }
                    }
                }
                State::Dollar(delimiter) => {
                    let delimiter = delimiter.as_bytes();
                    match line[i..]
                        .windows(delimiter.len())
                        .position(|window| window == delimiter)
                    {
                        Some(at) => {
                            i += at + delimiter.len();
                            self.state = State::Normal;
                        }
                        None => return Event::EndOfLine,
                    }
                }
                State::Comment(depth) => {
                    while i < line.len() {
                        if line[i..].starts_with(b"/*") {
                            *depth += 1;
                            i += 2;
                        } else if line[i..].starts_with(b"*/") {
                            *depth -= 1;
                            i += 2;
                            if *depth == 0 {
                                self.state = State::Normal;
                                break;
                            }
                        } else {
                            i += 1;
                        }
                    }
                }
                State::Normal => {
                    let b = line[i];
                    let next = line.get(i + 1).copied();
                    match b {
                        b' ' | b'\t' | b'\n' | b'\r' | 0x0c => i += 1,
                        b'-' if next == Some(b'-') => return Event::EndOfLine,
                        b'/' if next == Some(b'*') => {
                            self.state = State::Comment(1);
                            i += 2;
                        }
                        b'\\' => return Event::Backslash(i),
                        b';' => {
                            if self.paren_depth == 0 && self.begin_depth == 0 {
                                self.identifier_count = 0;
                                self.has_content = false;
                                return Event::Semicolon(i);
                            }
                            i += 1;
                        }
                        _ => {
                            self.has_content = true;
                            i = self.token(line, i);
                        }
                    }
                }
            }
        }
        Event::EndOfLine
    }

    /// Reads one token starting at `i` in the Normal state; returns where it ends.
    fn token(&mut self, line: &[u8], i: usize) -> usize {
        let b = line[i];
        match b {
            b'\'' => {
                self.state = State::Quote {
                    escapes: !self.standard_strings,
                };
                i + 1
            }
            b'"' => {
                self.state = State::DoubleQuote;
                i + 1
            }
            b'(' => {
                self.paren_depth += 1;
                i + 1
            }
            b')' => {
                self.paren_depth = self.paren_depth.saturating_sub(1);
                i + 1
            }
            b'$' => match dollar_delimiter(&line[i..]) {
                Some(length) => {
                    let delimiter = String::from_utf8_lossy(&line[i..i + length]).into_owned();
                    self.state = State::Dollar(delimiter);
                    i + length
                }
                // A parameter ($1) or a stray dollar sign.
                None => {
                    let mut end = i + 1;
                    while line.get(end).is_some_and(u8::is_ascii_digit) {
                        end += 1;
                    }
                    end
                }
            },
            b if b.is_ascii_digit() => {
                let mut end = i + 1;
                while line
                    .get(end)
                    .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
                {
                    end += 1;
                }
                end
            }
            b if is_ident_start(b) => {
                let mut end = i + 1;
                while line.get(end).is_some_and(|&b| is_ident_cont(b)) {
                    end += 1;
                }
                let word = &line[i..end];
                let next = line.get(end).copied();
                // E'...', U&'...', U&"...": prefixes glued to a quote, not identifiers.
                if word.eq_ignore_ascii_case(b"e") && next == Some(b'\'') {
                    self.state = State::Quote { escapes: true };
                    return end + 1;
                }
                if word.eq_ignore_ascii_case(b"u") && line[end..].starts_with(b"&'") {
                    self.state = State::Quote { escapes: false };
                    return end + 2;
                }
                if word.eq_ignore_ascii_case(b"u") && line[end..].starts_with(b"&\"") {
                    self.state = State::DoubleQuote;
                    return end + 2;
                }
                self.identifier(word);
                end
            }
            _ => i + 1,
        }
    }

    /// psql's identifier bookkeeping: the statement's first word, and BEGIN / CASE / END
    /// inside CREATE [OR REPLACE] FUNCTION / PROCEDURE.
    fn identifier(&mut self, word: &[u8]) {
        if self.identifier_count == 0 {
            self.identifiers = [0; 4];
            self.first = if word.eq_ignore_ascii_case(b"copy") {
                First::Copy
            } else if word.eq_ignore_ascii_case(b"set") {
                First::Set
            } else {
                First::Other
            };
        }
        let tracked = [&b"create"[..], b"function", b"procedure", b"or", b"replace"]
            .iter()
            .any(|keyword| word.eq_ignore_ascii_case(keyword));
        if tracked && self.identifier_count < self.identifiers.len() {
            self.identifiers[self.identifier_count] = word[0].to_ascii_lowercase();
        }
        self.identifier_count += 1;
        let ids = self.identifiers;
        let in_routine = ids[0] == b'c'
            && (ids[1] == b'f'
                || ids[1] == b'p'
                || (ids[1] == b'o' && ids[2] == b'r' && (ids[3] == b'f' || ids[3] == b'p')));
        if in_routine && self.paren_depth == 0 {
            if word.eq_ignore_ascii_case(b"begin") {
                self.begin_depth += 1;
            } else if word.eq_ignore_ascii_case(b"case") {
                if self.begin_depth >= 1 {
                    self.begin_depth += 1;
                }
            } else if word.eq_ignore_ascii_case(b"end") {
                self.begin_depth = self.begin_depth.saturating_sub(1);
            }
        }
    }
}

/// The offset of the first token of a statement, past whitespace and comments.
pub(super) fn first_token(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0c => i += 1,
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |n| i + n + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < bytes.len() {
                    if bytes[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if bytes[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            _ => return i,
        }
    }
    i
}

pub(super) fn blank_or_comment(text: &str) -> bool {
    let text = text.trim();
    text.is_empty() || text.starts_with("--")
}
