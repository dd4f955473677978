#include "data/story_generator.h"

#include <random>
#include <vector>

#include "data/corpus.h"

namespace moelab {
namespace {

struct Character {
  const char* name;
  const char* pronoun;     // he / she
  const char* possessive;  // his / her
};

const std::vector<Character> kHeroes = {
    {"Lily", "she", "her"},  {"Tom", "he", "his"},     {"Mia", "she", "her"},   {"Ben", "he", "his"},
    {"Sara", "she", "her"},  {"Max", "he", "his"},     {"Anna", "she", "her"},  {"Sam", "he", "his"},
    {"Lucy", "she", "her"},  {"Jack", "he", "his"},    {"Emma", "she", "her"},  {"Leo", "he", "his"},
    {"Zoe", "she", "her"},   {"Tim", "he", "his"},     {"Ella", "she", "her"},  {"Finn", "he", "his"},
    {"Rosa", "she", "her"},  {"Omar", "he", "his"},    {"Nina", "she", "her"},  {"Kai", "he", "his"},
    {"Ivy", "she", "her"},   {"Noah", "he", "his"},    {"Maya", "she", "her"},  {"Eli", "he", "his"}};

const std::vector<const char*> kAnimals = {"dog",   "cat",  "bunny", "bird",   "frog",  "duck",
                                           "mouse", "bear", "fox",   "turtle", "puppy", "kitten",
                                           "owl",   "pig",  "horse", "lamb",   "squirrel", "fish"};
const std::vector<const char*> kAnimalNames = {"Spot", "Fluffy", "Coco", "Buddy", "Pip",  "Daisy",
                                               "Rex",  "Mittens", "Sunny", "Bubbles", "Ziggy", "Honey"};
const std::vector<const char*> kObjects = {"ball",  "kite",  "red hat", "toy car", "doll",   "book",
                                           "drum",  "boat",  "blanket", "shiny rock", "crayon", "teddy bear",
                                           "balloon", "cup", "box",     "key",     "flower", "shell"};
const std::vector<const char*> kPlaces = {"park",   "garden", "forest", "beach",  "farm",   "pond",
                                          "hill",   "school", "house",  "river",  "market", "meadow",
                                          "zoo",    "lake",   "yard",   "library"};
const std::vector<const char*> kAdjectives = {"happy", "big",  "little", "kind",  "shy",   "brave",
                                              "silly", "tiny", "curious", "sleepy", "funny", "gentle"};
const std::vector<const char*> kWeather = {"sunny", "rainy", "windy", "cold", "warm", "bright"};
const std::vector<const char*> kTimes = {"One day", "Once upon a time", "One morning", "Last summer",
                                         "One evening", "On a " /* weather follows */};
const std::vector<const char*> kFeelings = {"sad", "scared", "angry", "worried", "lonely", "upset"};
const std::vector<const char*> kJoys = {"happy", "glad", "proud", "excited", "thankful", "calm"};
const std::vector<const char*> kActivities = {"play with the ball", "build a sand castle", "look for bugs",
                                              "jump in the puddles", "pick some flowers", "fly a kite",
                                              "read a story", "draw a picture", "sing a song",
                                              "climb the big tree", "bake a cake", "go for a walk"};
const std::vector<const char*> kProblems = {"lost", "broke", "dropped in the water", "could not find",
                                            "got stuck in a tree with"};
const std::vector<const char*> kLessons = {
    "Sharing makes everyone happy.", "It is good to help your friends.", "Being kind is the best thing to do.",
    "Saying sorry can fix a lot.",   "It is okay to ask for help.",     "Friends make hard things easy.",
    "Patience is important.",         "Telling the truth is brave."};

class Teller {
 public:
  explicit Teller(uint64_t seed) : rng_(seed) {}

  template <typename T>
  const T& pick(const std::vector<T>& items) {
    return items[rng_() % items.size()];
  }
  bool chance(int percent) { return static_cast<int>(rng_() % 100) < percent; }
  int below(int n) { return static_cast<int>(rng_() % static_cast<uint64_t>(n)); }

  std::string story() {
    Character hero = pick(kHeroes);
    Character friend_ = pick(kHeroes);
    while (std::string(friend_.name) == hero.name) friend_ = pick(kHeroes);
    std::string animal = pick(kAnimals), pet = pick(kAnimalNames), object = pick(kObjects);
    std::string place = pick(kPlaces), adjective = pick(kAdjectives);
    std::string s;
    std::string opening = pick(kTimes);
    if (opening == "On a ") opening += std::string(pick(kWeather)) + " day";
    const char* child = std::string(hero.pronoun) == "she" ? "girl" : "boy";
    s += opening + ", there was a " + adjective + " " + child + " named " + hero.name + ". ";
    s += cap(hero.pronoun) + " had a " + animal + " named " + pet + ". ";
    s += cap(hero.pronoun) + " loved to " + std::string(pick(kActivities)) + " with " + pet + " at the " + place + ".\n\n";

    switch (below(4)) {
      case 0: lost_object(s, hero, friend_, object, place); break;
      case 1: new_friend(s, hero, friend_, animal, pet, place); break;
      case 2: big_day(s, hero, friend_, pet, place); break;
      default: sharing(s, hero, friend_, object); break;
    }
    if (chance(60)) s += std::string("\n\n") + pick(kLessons);
    return s;
  }

 private:
  static std::string cap(std::string word) {
    if (!word.empty() && word[0] >= 'a' && word[0] <= 'z') word[0] = static_cast<char>(word[0] - 'a' + 'A');
    return word;
  }

  void lost_object(std::string& s, const Character& h, const Character& f, const std::string& object,
                   const std::string& place) {
    s += "One day, " + std::string(h.name) + " " + pick(kProblems) + " " + h.possessive + " " + object + ". ";
    s += cap(h.pronoun) + " felt very " + pick(kFeelings) + ". ";
    s += "\"Where is my " + object + "?\" " + h.name + " asked. ";
    s += std::string(f.name) + " came to help. \"Let's look for it together,\" " + f.name + " said. ";
    s += "They looked under the bed, behind the door and in the " + place + ". ";
    if (chance(50)) s += "At last, they found it next to a " + std::string(pick(kAdjectives)) + " " + pick(kAnimals) + ". ";
    else s += "Then " + std::string(f.name) + " saw something shiny. It was the " + object + "! ";
    s += std::string(h.name) + " was so " + pick(kJoys) + ". \"Thank you, " + f.name + "!\" " + h.pronoun + " said, and gave " +
         f.name + " a big hug.";
  }

  void new_friend(std::string& s, const Character& h, const Character& f, const std::string& animal,
                  const std::string& pet, const std::string& place) {
    s += "At the " + place + ", " + h.name + " saw " + f.name + " sitting alone. " + f.name + " looked " + pick(kFeelings) + ". ";
    s += std::string(h.name) + " walked over and said, \"Hi! Do you want to play with me and " + pet + "?\" ";
    s += std::string(f.name) + " smiled and said, \"Yes, please!\" ";
    s += "The " + animal + " wagged and jumped. They played until the sun went down. ";
    if (chance(50)) s += "When it was time to go home, " + std::string(f.name) + " said, \"You are my best friend.\" ";
    s += "From that day on, " + std::string(h.name) + " and " + f.name + " played together every day.";
  }

  void big_day(std::string& s, const Character& h, const Character& f, const std::string& pet, const std::string& place) {
    std::string activity = pick(kActivities);
    s += "Today was a big day. " + std::string(h.name) + " wanted to " + activity + " all by " +
         (std::string(h.pronoun) == "he" ? "himself" : "herself") + ". ";
    s += "But it was hard, and " + std::string(h.pronoun) + " felt " + pick(kFeelings) + ". ";
    s += cap(h.possessive) + " mom said, \"Try again, and do not give up.\" ";
    s += std::string(h.name) + " tried again, and again. " + pet + " watched and waited. ";
    s += "Finally, " + std::string(h.pronoun) + " did it! " + f.name + " clapped and cheered at the " + place + ". ";
    s += std::string(h.name) + " felt " + pick(kJoys) + " and strong.";
  }

  void sharing(std::string& s, const Character& h, const Character& f, const std::string& object) {
    s += std::string(f.name) + " wanted to play with " + h.name + "'s " + object + ". ";
    s += "\"No, it is mine!\" " + std::string(h.name) + " said. " + f.name + " was " + pick(kFeelings) + " and began to cry. ";
    s += std::string(h.name) + " thought about it. " + cap(h.pronoun) + " did not like to see " + f.name + " cry. ";
    s += "\"I am sorry,\" " + std::string(h.name) + " said. \"We can play with it together.\" ";
    s += "They took turns with the " + object + " and laughed a lot. ";
    s += "Sharing was more fun than playing alone.";
  }

  std::mt19937_64 rng_;
};

// Fables: a second domain for fine-tuning studies. Animal characters named by their kind,
// past-tense narration in an older register, one closing moral; the same alphabet as the
// tales (so a tokenizer trained on tales encodes fables without unknown characters) but other
// words, plots and sentence shapes, so that a model trained on tales scores clearly worse here.
struct Beast {
  const char* name;      // capitalised, as fables name their characters
  const char* pronoun;   // he / she
  const char* trait;     // what it is known for
};

const std::vector<Beast> kBeasts = {
    {"Fox", "he", "cunning"},     {"Crow", "she", "vain"},      {"Lion", "he", "mighty"},   {"Mouse", "she", "humble"},
    {"Hare", "he", "swift"},      {"Tortoise", "she", "patient"}, {"Wolf", "he", "greedy"}, {"Ant", "she", "diligent"},
    {"Dove", "she", "gentle"},    {"Bear", "he", "lazy"},       {"Stork", "she", "clever"}, {"Raven", "he", "wise"},
    {"Boar", "he", "stubborn"},   {"Owl", "she", "solemn"},     {"Heron", "she", "proud"},  {"Ox", "he", "strong"}};
const std::vector<const char*> kRealms = {"a deep wood", "the edge of a marsh", "a meadow beside a river", "the foot of a mountain",
                                          "an old orchard", "a wide plain", "a valley of thorns", "the banks of a cold stream"};
const std::vector<const char*> kTreasures = {"a piece of cheese", "a bunch of ripe grapes", "a fat worm", "a store of grain",
                                             "a golden acorn", "a honeycomb", "a silver fish", "a ripe pear"};
const std::vector<const char*> kSeasons = {"summer", "autumn", "the long winter", "a dry season", "the spring rains"};
const std::vector<const char*> kMorals = {
    "Slow and steady wins the race.", "Flattery is the food of fools.", "No act of kindness is ever wasted.",
    "Pride goes before a fall.", "Work today, and you will eat tomorrow.", "Do not count your grain before it is gathered.",
    "The greedy often lose what they have.", "A friend in need is a friend indeed.", "Think before you leap."};
const std::vector<const char*> kOpenings = {"Long ago", "In the days when beasts could speak", "There was once a time when",
                                            "Many years past", "In an age now forgotten"};

class Fabulist {
 public:
  explicit Fabulist(uint64_t seed) : rng_(seed) {}

  std::string fable() {
    const Beast& a = pick(kBeasts);
    const Beast* b = &pick(kBeasts);
    while (std::string(b->name) == a.name) b = &pick(kBeasts);
    std::string s = std::string(pick(kOpenings)) + ", in " + pick(kRealms) + ", there dwelt a " + a.trait + " " + a.name +
                    " and a " + b->trait + " " + b->name + ". ";
    switch (rng_() % 4) {
      case 0: boast(s, a, *b); break;
      case 1: flattery(s, a, *b); break;
      case 2: repaid(s, a, *b); break;
      default: seasons(s, a, *b); break;
    }
    s += std::string("\n\nAnd so the ") + (rng_() % 2 ? "fable teaches" : "old ones say") + " that " + lower_first(pick(kMorals));
    return s;
  }

 private:
  template <typename T>
  const T& pick(const std::vector<T>& items) {
    return items[rng_() % items.size()];
  }
  static std::string lower_first(std::string text) {
    if (!text.empty() && text[0] >= 'A' && text[0] <= 'Z') text[0] = static_cast<char>(text[0] - 'A' + 'a');
    return text;
  }
  static std::string possessive(const Beast& x) { return std::string(x.pronoun) == "he" ? "his" : "her"; }

  void boast(std::string& s, const Beast& a, const Beast& b) {
    s += "The " + std::string(a.name) + " boasted to every creature that none could match " + possessive(a) + " speed. ";
    s += "\"I shall race thee,\" replied the " + std::string(b.name) + ", \"from this stone to the far hill.\" ";
    s += "The " + std::string(a.name) + " laughed aloud, and when the race began " + a.pronoun + " ran so far ahead that " +
         a.pronoun + " lay down beneath a tree to rest. ";
    s += "Meanwhile the " + std::string(b.name) + " plodded on, never pausing, until at last " + b.pronoun +
         " passed the sleeping " + a.name + ". ";
    s += "When the " + std::string(a.name) + " awoke, the " + b.name + " had already reached the hill, and all the beasts " +
         "cheered the one who had been mocked.";
  }

  void flattery(std::string& s, const Beast& a, const Beast& b) {
    const std::string prize = pick(kTreasures);
    s += "One morning the " + std::string(b.name) + " found " + prize + " and carried it to a high branch. ";
    s += "The " + std::string(a.name) + " saw this, and wishing to have it, " + a.pronoun + " spoke sweetly. ";
    s += "\"How fine thou art, good " + std::string(b.name) + "! Surely thy voice is finer still. Wilt thou not sing?\" ";
    s += "Pleased by such praise, the " + std::string(b.name) + " opened " + possessive(b) + " mouth to sing, and " + prize +
         " fell to the ground. ";
    s += "The " + std::string(a.name) + " seized it at once and departed, saying, \"Thy voice is well enough, but thy wits are wanting.\"";
  }

  void repaid(std::string& s, const Beast& a, const Beast& b) {
    s += "It befell that the " + std::string(a.name) + " caught the " + b.name + " and meant to devour " +
         (std::string(b.pronoun) == "he" ? "him" : "her") + ". ";
    s += "\"Spare me,\" begged the " + std::string(b.name) + ", \"and one day I shall repay thy mercy.\" ";
    s += "The " + std::string(a.name) + " scoffed, yet " + a.pronoun + " let " + (std::string(b.pronoun) == "he" ? "him" : "her") +
         " go. ";
    s += "Not long after, the " + std::string(a.name) + " was snared in a hunter's net and could not free " +
         (std::string(a.pronoun) == "he" ? "himself" : "herself") + ". ";
    s += "Hearing the cries, the " + std::string(b.name) + " came and worked at the ropes through the night, until the " +
         a.name + " walked free.";
  }

  void seasons(std::string& s, const Beast& a, const Beast& b) {
    const std::string season = pick(kSeasons);
    s += "All through " + season + " the " + std::string(b.name) + " labored, gathering " + pick(kTreasures) +
         " and storing it away, while the " + a.name + " idled in the sun and mocked such toil. ";
    s += "Then came the frost, and the fields lay bare. ";
    s += "The hungry " + std::string(a.name) + " went to the " + b.name + " and begged for a share. ";
    s += "\"What didst thou do while I worked?\" asked the " + std::string(b.name) + ". ";
    s += "\"I rested,\" said the " + std::string(a.name) + ". \"Then rest now,\" came the reply, and the door was shut.";
  }

  std::mt19937_64 rng_;
};

}  // namespace

std::string generate_stories(int64_t stories, uint64_t seed, const std::string& style) {
  Teller teller(seed);
  Fabulist fabulist(seed);
  std::string out;
  out.reserve(static_cast<size_t>(stories) * 700);
  for (int64_t i = 0; i < stories; ++i) {
    out += style == "fables" ? fabulist.fable() : teller.story();
    out += "\n";
    out += kEndOfText;
    out += "\n";
  }
  return out;
}

}  // namespace moelab
