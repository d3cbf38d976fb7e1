//! The index and the query: how a question's words become BM25 queries,
//! and how the best score becomes a confidence.
//!
//! A question is read as the things it asks about, its concepts: each word
//! that is not a stop word, or a phrase of the lexicon ("money back"). A
//! concept is found in an entry in any of its forms: its own words, their
//! corrections if they look like typos, or the other members of its lexicon
//! groups ("refund"). The form only scales how much the concept counts; how
//! much it counts at most is set by the customer's own words, whichever
//! form an entry uses. Otherwise an entry would score higher for saying a
//! rare synonym than another entry for saying the customer's own, more
//! common word.

use std::collections::HashSet;

use tantivy::collector::TopDocs;
use tantivy::fieldnorm::FieldNormReader;
use tantivy::query::{
    Bm25StatisticsProvider, Bm25Weight, BooleanQuery, BoostQuery, DisjunctionMaxQuery,
    EnableScoring, FuzzyTermQuery, Occur, Query, Scorer, TermQuery,
};
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::{
    DocAddress, DocSet, Index, IndexWriter, ReloadPolicy, Score, Searcher, TantivyDocument,
    TantivyError, Term,
};

use crate::analyzer::{self, Analyzer, Word};
use crate::lexicon::{self, lexicon};
use crate::{
    Config, Entry, FaqError, MAX_ENTRIES, MAX_ID_BYTES, MAX_QUESTIONS, MAX_TEXT_BYTES, Result,
    Text, Verdict,
};

/// How much a word of the answer counts against a word of a question:
/// answers share words with the question they answer, but also mention
/// much that nobody asks about.
const ANSWER_BOOST: Score = 0.3;

/// How much a word one typo away counts against the word itself.
const TYPO_BOOST: Score = 0.6;

/// How much another member of a lexicon group counts against the words the
/// customer used: customers accept them in each other's place, but not
/// always ("return" is not "exchange").
const RELATED_BOOST: Score = 0.7;

/// Unknown words at least this long (as typed) are taken for typos. Shorter
/// ones have too many neighbours one edit away ("card", "care", "cart").
const MIN_TYPO_CHARS: usize = 5;

/// A run-together word is split into parts at least this long: shorter
/// ones are mostly fragments that happen to be words ("a", "be", "on").
const MIN_PART_CHARS: usize = 3;

/// Only the first words of a question are read, stop words included: a
/// pasted essay costs no more than a long question.
const MAX_QUESTION_WORDS: usize = 64;

/// How many of BM25's best entries are weighed again, concept by concept.
const CANDIDATES: usize = 5;

/// The writer's memory: tantivy's minimum. A larger FAQ is written in more
/// than one segment, which the searches handle.
const WRITER_MEMORY_BYTES: usize = 15_000_000;

/// The field that holds each document's position in `Faq::entries`: the
/// ids tantivy gives documents count within a segment.
const ENTRY_FIELD: &str = "entry";

/// A business's FAQ, indexed and ready for questions.
pub struct Faq {
    entries: Vec<Answer>,
    searcher: Searcher,
    analyzer: Analyzer,
    question: Field,
    answer: Field,
    /// How many stems the entries' questions hold, on average: BM25's
    /// measure of a long question.
    question_norm: Score,
    config: Config,
}

/// What a verdict needs of an entry, at its position in `Faq::entries`.
struct Answer {
    id: String,
    text: String,
}

/// One thing a question asks about, and the forms an entry may say it in.
struct Concept {
    /// Empty when the FAQ has it in no form.
    forms: Vec<Form>,
    /// How many entries have the customer's own words or, if none has,
    /// the commonest other form. It sets how much the concept counts (its
    /// BM25 inverse document frequency), whichever form an entry uses.
    doc_freq: u64,
    /// How many of the customer's words it stands for: a phrase counts as
    /// much as its words would one by one.
    words: usize,
}

/// One way an entry may say a concept: stems it must all have.
struct Form {
    stems: Vec<Stem>,
    /// How much the form counts against the customer's own words.
    weight: Score,
}

/// A stem, and how many entries have it in their questions and answers.
struct Stem {
    text: String,
    doc_freqs: [u64; 2],
}

impl Stem {
    /// In how many entries it is, counting the field it is commonest in.
    fn doc_freq(&self) -> u64 {
        self.doc_freqs[0].max(self.doc_freqs[1])
    }
}

impl Form {
    /// How many entries have it, at most.
    fn doc_freq(&self) -> u64 {
        self.stems.iter().map(Stem::doc_freq).min().unwrap_or(0)
    }
}

impl std::fmt::Debug for Faq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faq")
            .field("entries", &self.entries.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Faq {
    /// Checks the entries and indexes them, with the default [`Config`].
    pub fn build(entries: &[Entry]) -> Result<Faq> {
        let analyzer = Analyzer::new();
        validate(entries, &analyzer)?;

        let mut schema = Schema::builder();
        let text = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(analyzer::NAME)
                .set_index_option(IndexRecordOption::WithFreqs),
        );
        let question = schema.add_text_field("question", text.clone());
        let answer = schema.add_text_field("answer", text);
        let entry = schema.add_u64_field(ENTRY_FIELD, NumericOptions::default().set_fast());
        let index = Index::create_in_ram(schema.build());
        index
            .tokenizers()
            .register(analyzer::NAME, Analyzer::index());

        let mut writer: IndexWriter = index.writer_with_num_threads(1, WRITER_MEMORY_BYTES)?;
        for (position, faq_entry) in (0u64..).zip(entries) {
            let mut doc = TantivyDocument::new();
            for text in &faq_entry.questions {
                doc.add_text(question, text);
            }
            doc.add_text(answer, &faq_entry.answer);
            doc.add_u64(entry, position);
            writer.add_document(doc)?;
        }
        writer.commit()?;
        let searcher = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?
            .searcher();
        let question_norm =
            searcher.total_num_tokens(question)? as Score / searcher.num_docs() as Score;

        Ok(Faq {
            entries: entries
                .iter()
                .map(|entry| Answer {
                    id: entry.id.clone(),
                    text: entry.answer.clone(),
                })
                .collect(),
            searcher,
            analyzer,
            question,
            answer,
            question_norm,
            config: Config::default(),
        })
    }

    /// The same FAQ, answering as `config` says.
    pub fn with_config(self, config: Config) -> Faq {
        Faq { config, ..self }
    }

    /// Finds the entry that best answers `question`, and says how sure it is.
    ///
    /// The question is read as concepts (see the module docs): each word
    /// that is not a stop word, or a phrase the lexicon has. Each concept is
    /// looked up in the entries' questions and, at a weight of 0.3, their
    /// answers, in the best of its forms:
    ///
    /// - its own words, at full weight;
    /// - the other members of its lexicon groups, at 0.7: "postage" is
    ///   found as "shipping";
    /// - if it has neither, for a single word typed with five letters or
    ///   more, the FAQ's words one edit away (a transposition counts as
    ///   one), at 0.6: it is taken for a typo. Tantivy's `FuzzyTermQuery`
    ///   finds the same words with the same automaton but scores every
    ///   match alike, without their rarity; here they are scored as the
    ///   concept is. A word the FAQ or the lexicon knows is never
    ///   corrected: it is most likely meant, and correcting it would let
    ///   "cart" find "card".
    ///
    /// A word neither the FAQ nor the lexicon knows that runs two of the
    /// FAQ's words together is read as those two ("forgotpassword").
    ///
    /// The confidence is an entry's score divided by the score the
    /// question would get against an entry asked exactly as the customer
    /// asked it: for each concept, the BM25 score of one occurrence in a
    /// question as long as the customer's, weighted by how rare the
    /// customer's own words are among the entries (or, if no entry has
    /// them, the commonest other form) and by how many words it stands for,
    /// a concept the FAQ has in no form weighing as a word no entry has,
    /// the most there is. Raw BM25
    /// grows with the number and rarity of the words, so it cannot be
    /// compared across questions; the ratio can: 1 means every concept
    /// matched an entry's question in the customer's own words, near 0
    /// that next to nothing did. Each concept counts at most its own part
    /// of that ideal, so repeated words and the answer cannot make up for
    /// a concept the entry lacks: "delete my instagram account" does not
    /// fit the entry on deleting an account better for its answer saying
    /// "account" twice. A question about something the FAQ never mentions
    /// ("do you sell cars") scores low even when its other words match,
    /// because its unknown words weigh the most. BM25 picks the
    /// [`CANDIDATES`] best entries, and the confidence orders them.
    ///
    /// The bot answers when the confidence reaches [`Config::threshold`]
    /// and leads the runner-up's, measured the same way, by
    /// [`Config::min_margin`]: two entries that fit about as well mean the
    /// words did not tell them apart.
    ///
    /// The index lives in memory, where a search does not fail; if one
    /// did, the verdict is unsure and a human takes over.
    pub fn ask(&self, question: &str) -> Verdict {
        let ranking = self.rank(question).unwrap_or_default();
        match ranking.best {
            Some(entry)
                if ranking.confidence >= self.config.threshold
                    && ranking.margin >= self.config.min_margin =>
            {
                Verdict::Answer {
                    entry_id: entry.id.clone(),
                    answer: entry.text.clone(),
                    confidence: ranking.confidence,
                }
            }
            best => Verdict::Unsure {
                confidence: ranking.confidence,
                best: best.map(|entry| entry.id.clone()),
            },
        }
    }

    fn rank(&self, question: &str) -> tantivy::Result<Ranking<'_>> {
        let words = self.split_run_together(self.analyzer.words(question, MAX_QUESTION_WORDS))?;
        let concepts = self.concepts(&words)?;
        let length = concepts.iter().map(|concept| concept.words).sum::<usize>();
        let length = u32::try_from(length).unwrap_or(u32::MAX);
        let mut queries: Vec<(Box<dyn Query>, Score)> = Vec::new();
        let mut ideal: Score = 0.0;
        for concept in &concepts {
            let most = self.ideal(concept, length);
            ideal += most;
            queries.extend(self.query(concept).map(|query| (query, most)));
        }
        if queries.is_empty() {
            return Ok(Ranking::default());
        }
        let clauses = queries
            .iter()
            .map(|(query, _)| (Occur::Should, query.box_clone()))
            .collect();
        let hits = self.searcher.search(
            &BooleanQuery::new(clauses),
            &TopDocs::with_limit(CANDIDATES).order_by_score(),
        )?;
        let mut fits = Vec::with_capacity(hits.len());
        for (_, address) in hits {
            let mut score: Score = 0.0;
            for (query, most) in &queries {
                score += self.score_of(query.as_ref(), address)?.min(*most);
            }
            fits.push((score / ideal, address));
        }
        fits.sort_by(|a, b| b.0.total_cmp(&a.0));
        let Some(&(confidence, best)) = fits.first() else {
            return Ok(Ranking::default());
        };
        let runner_up = fits.get(1).map_or(0.0, |&(fit, _)| fit);
        Ok(Ranking {
            best: Some(self.entry(best)?),
            confidence,
            margin: confidence - runner_up,
        })
    }

    /// The score of `query` for the entry at `address`; 0 if it does not
    /// match.
    fn score_of(&self, query: &dyn Query, address: DocAddress) -> tantivy::Result<Score> {
        let weight = query.weight(EnableScoring::enabled_from_searcher(&self.searcher))?;
        let mut scorer = weight.scorer(self.searcher.segment_reader(address.segment_ord), 1.0)?;
        let at = match scorer.doc() {
            doc if doc < address.doc_id => scorer.seek(address.doc_id),
            doc => doc,
        };
        Ok(if at == address.doc_id {
            scorer.score()
        } else {
            0.0
        })
    }

    /// The question's words, with each that neither the FAQ nor the lexicon
    /// knows split into two the FAQ knows, where it can be.
    fn split_run_together(&self, words: Vec<Word>) -> tantivy::Result<Vec<Word>> {
        let mut split = Vec::with_capacity(words.len());
        for word in words {
            let unknown = !word.stop
                && self.stem(&word.stem)?.doc_freq() == 0
                && lexicon().find(std::slice::from_ref(&word)).is_none();
            let halves = if unknown {
                self.halves(&word.text)?
            } else {
                None
            };
            match halves {
                Some(halves) => split.extend(halves),
                None => split.push(word),
            }
        }
        Ok(split)
    }

    /// `text` as two words the FAQ knows, split at the first place that
    /// gives two.
    fn halves(&self, text: &str) -> tantivy::Result<Option<[Word; 2]>> {
        let chars = text.chars().count();
        for (position, (at, _)) in text.char_indices().enumerate() {
            if position < MIN_PART_CHARS {
                continue;
            }
            if chars - position < MIN_PART_CHARS {
                break;
            }
            let (left, right) = text.split_at(at);
            if let (Some(left), Some(right)) = (self.analyzer.word(left), self.analyzer.word(right))
                && !left.stop
                && !right.stop
                && self.stem(&left.stem)?.doc_freq() > 0
                && self.stem(&right.stem)?.doc_freq() > 0
            {
                return Ok(Some([left, right]));
            }
        }
        Ok(None)
    }

    /// The concepts of a question's words, in order.
    fn concepts(&self, words: &[Word]) -> tantivy::Result<Vec<Concept>> {
        let mut concepts = Vec::new();
        let mut rest = words;
        while !rest.is_empty() {
            let found = lexicon().find(rest);
            let (typed, after) = rest.split_at(found.as_ref().map_or(1, |found| found.len));
            rest = after;
            let own = lexicon::content(typed);
            if !own.is_empty() {
                let related = found.map_or_else(Vec::new, |found| found.related);
                concepts.push(self.concept(typed, &own, &related)?);
            }
        }
        Ok(concepts)
    }

    /// The concept of the words `typed`: `own` are their stems, stop words
    /// left out, and `related` the other members of their lexicon groups.
    fn concept(
        &self,
        typed: &[Word],
        own: &[String],
        related: &[&[String]],
    ) -> tantivy::Result<Concept> {
        let own_words = own.len();
        let own = self.form(own, 1.0)?;
        let mut forms = Vec::with_capacity(related.len() + 1);
        for stems in related {
            let form = self.form(stems, RELATED_BOOST)?;
            if form.doc_freq() > 0 {
                forms.push(form);
            }
        }
        let doc_freq = own.doc_freq();
        if doc_freq > 0 {
            forms.insert(0, own);
            return Ok(Concept {
                forms,
                doc_freq,
                words: own_words,
            });
        }
        if forms.is_empty()
            && let ([stem], [word]) = (own.stems.as_slice(), typed)
            && word.text.chars().count() >= MIN_TYPO_CHARS
        {
            for correction in self.corrections(&stem.text)? {
                forms.push(self.form(&[correction], TYPO_BOOST)?);
            }
        }
        let doc_freq = forms.iter().map(Form::doc_freq).max().unwrap_or(0);
        Ok(Concept {
            forms,
            doc_freq,
            words: own_words,
        })
    }

    fn form(&self, stems: &[String], weight: Score) -> tantivy::Result<Form> {
        Ok(Form {
            stems: stems
                .iter()
                .map(|stem| self.stem(stem))
                .collect::<tantivy::Result<_>>()?,
            weight,
        })
    }

    fn stem(&self, text: &str) -> tantivy::Result<Stem> {
        let mut doc_freqs = [0; 2];
        for (doc_freq, field) in doc_freqs.iter_mut().zip([self.question, self.answer]) {
            *doc_freq = self
                .searcher
                .doc_freq(&Term::from_field_text(field, text))?;
        }
        Ok(Stem {
            text: text.to_owned(),
            doc_freqs,
        })
    }

    /// The concept in the best of its forms. Each form's stems count a
    /// share of the concept's weight, in the questions and at
    /// [`ANSWER_BOOST`] in the answers, and must all be there.
    fn query(&self, concept: &Concept) -> Option<Box<dyn Query>> {
        if concept.forms.is_empty() {
            return None;
        }
        let docs = self.searcher.num_docs();
        let idf = idf(concept.doc_freq, docs);
        let mut disjuncts: Vec<Box<dyn Query>> = Vec::with_capacity(concept.forms.len());
        for form in &concept.forms {
            let share = form.weight * concept.words as Score / form.stems.len() as Score;
            let mut stems: Vec<(Occur, Box<dyn Query>)> = Vec::with_capacity(form.stems.len());
            for stem in &form.stems {
                let mut fields: Vec<(Occur, Box<dyn Query>)> = Vec::with_capacity(2);
                let weighted = [(self.question, 1.0), (self.answer, ANSWER_BOOST)];
                for ((field, boost), doc_freq) in weighted.into_iter().zip(stem.doc_freqs) {
                    if doc_freq == 0 {
                        continue;
                    }
                    let term = TermQuery::new(
                        Term::from_field_text(field, &stem.text),
                        IndexRecordOption::WithFreqs,
                    );
                    // Tantivy weighs the term by its own rarity: trade that
                    // for the concept's.
                    let boost = share * boost * idf / self::idf(doc_freq, docs);
                    fields.push((Occur::Should, boosted(Box::new(term), boost)));
                }
                stems.push((Occur::Must, Box::new(BooleanQuery::new(fields))));
            }
            disjuncts.push(Box::new(BooleanQuery::new(stems)));
        }
        Some(Box::new(DisjunctionMaxQuery::new(disjuncts)))
    }

    /// The BM25 score of the concept occurring once in an entry's questions
    /// that are `length` words long, for each word it stands for.
    fn ideal(&self, concept: &Concept, length: u32) -> Score {
        let one = Bm25Weight::for_one_term(
            concept.doc_freq,
            self.searcher.num_docs(),
            self.question_norm,
        )
        .score(FieldNormReader::fieldnorm_to_id(length), 1);
        one * concept.words as Score
    }

    /// The FAQ's stems, in questions or answers, one edit from `stem`.
    fn corrections(&self, stem: &str) -> tantivy::Result<Vec<String>> {
        let mut corrections = Vec::new();
        let term = Term::from_field_text(self.question, stem);
        let automaton = FuzzyTermQuery::new(term, 1, true).automaton()?;
        for segment in self.searcher.segment_readers() {
            for field in [self.question, self.answer] {
                let index = segment.inverted_index(field)?;
                let mut stream = index.terms().search(&automaton).into_stream()?;
                while stream.advance() {
                    let correction = String::from_utf8_lossy(stream.key()).into_owned();
                    if !corrections.contains(&correction) {
                        corrections.push(correction);
                    }
                }
            }
        }
        Ok(corrections)
    }

    fn entry(&self, address: DocAddress) -> tantivy::Result<&Answer> {
        let position = self
            .searcher
            .segment_reader(address.segment_ord)
            .fast_fields()
            .u64(ENTRY_FIELD)?
            .first(address.doc_id);
        position
            .and_then(|position| self.entries.get(usize::try_from(position).ok()?))
            .ok_or_else(|| TantivyError::InternalError(format!("{address:?} names no entry")))
    }
}

fn boosted(query: Box<dyn Query>, boost: Score) -> Box<dyn Query> {
    Box::new(BoostQuery::new(query, boost))
}

/// BM25's inverse document frequency, as tantivy computes it: how much a
/// stem in `doc_freq` of `docs` entries counts.
fn idf(doc_freq: u64, docs: u64) -> Score {
    let rest = docs.saturating_sub(doc_freq) as Score;
    (1.0 + (rest + 0.5) / (doc_freq as Score + 0.5)).ln()
}

/// How the best entry for a question fits, if any shares a word with it.
#[derive(Default)]
struct Ranking<'a> {
    best: Option<&'a Answer>,
    confidence: Score,
    /// The best entry's confidence less the runner-up's.
    margin: Score,
}

fn validate(entries: &[Entry], analyzer: &Analyzer) -> Result<()> {
    if entries.is_empty() {
        return Err(FaqError::NoEntries);
    }
    if entries.len() > MAX_ENTRIES {
        return Err(FaqError::TooManyEntries {
            count: entries.len(),
        });
    }
    let mut ids = HashSet::new();
    for (index, entry) in entries.iter().enumerate() {
        let id = &entry.id;
        if id.trim().is_empty() {
            return Err(FaqError::EmptyId { index });
        }
        if id.len() > MAX_ID_BYTES {
            return Err(FaqError::IdTooLong {
                index,
                len: id.len(),
            });
        }
        if !ids.insert(id.as_str()) {
            return Err(FaqError::DuplicateId { id: id.clone() });
        }
        if entry.questions.is_empty() {
            return Err(FaqError::NoQuestions { id: id.clone() });
        }
        if entry.questions.len() > MAX_QUESTIONS {
            return Err(FaqError::TooManyQuestions {
                id: id.clone(),
                count: entry.questions.len(),
            });
        }
        for question in &entry.questions {
            check_text(id, Text::Question, question)?;
            if analyzer
                .words(question, usize::MAX)
                .iter()
                .all(|word| word.stop)
            {
                return Err(FaqError::NoWords {
                    id: id.clone(),
                    question: question.clone(),
                });
            }
        }
        check_text(id, Text::Answer, &entry.answer)?;
    }
    Ok(())
}

fn check_text(id: &str, text: Text, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(FaqError::Blank {
            id: id.to_owned(),
            text,
        });
    }
    if value.len() > MAX_TEXT_BYTES {
        return Err(FaqError::TooLong {
            id: id.to_owned(),
            text,
            len: value.len(),
        });
    }
    Ok(())
}
