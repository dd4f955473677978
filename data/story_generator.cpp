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

}  // namespace

std::string generate_stories(int64_t stories, uint64_t seed) {
  Teller teller(seed);
  std::string out;
  out.reserve(static_cast<size_t>(stories) * 700);
  for (int64_t i = 0; i < stories; ++i) {
    out += teller.story();
    out += "\n";
    out += kEndOfText;
    out += "\n";
  }
  return out;
}

}  // namespace moelab
