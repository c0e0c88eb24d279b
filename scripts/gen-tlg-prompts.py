#!/usr/bin/env python3
"""gen-tlg-prompts.py: write data/tlg-prompts.tsv, kvscope's own TLG prompt set.

The instructions are written for this project (topics, phrasings and the
paragraphs to summarise are ours; nothing is taken from Ruler's data). Each
of Ruler's nine target levels gets 30 instructions: 28 made from a topic and
a form (explain, list, story, letter, describe, compare, advice, argue, how-to)
and 2 summaries of a paragraph given in the prompt. A fixed seed makes the
file reproducible: python3 scripts/gen-tlg-prompts.py > data/tlg-prompts.tsv
Columns: LEVEL<TAB>FORM<TAB>INSTRUCTION (a literal \\n inside an instruction
stands for a line break).
"""
import random

LEVELS = ["10", "30", "50", "80", "150", "300", "500", "700", ">800"]

TOPICS = [
    "how bees make honey", "why leaves change colour in autumn", "the water cycle",
    "how a bicycle stays upright", "the history of the printing press", "how vaccines work",
    "why the moon has phases", "how bread rises", "the causes of ocean tides",
    "how a refrigerator keeps food cold", "the life of a lighthouse keeper",
    "how volcanoes form", "the invention of the telephone", "why cats purr",
    "how rainbows appear", "the rules of chess", "how a library is organised",
    "the benefits of regular sleep", "how trains run on time", "the migration of birds",
    "how coral reefs grow", "the first journey to the moon", "how compost is made",
    "why we have seasons", "how a city recycles its waste", "the role of a school nurse",
    "how glass is made", "the music of a street band", "why exercise improves mood",
    "how maps were drawn before satellites", "the work of a beekeeper", "how a bridge carries weight",
    "the habits of octopuses", "how electricity reaches a house", "the growth of a sunflower",
    "how to plan a small garden", "the life cycle of a frog", "how snow forms",
    "the history of the bicycle", "how a market sets prices", "the job of a firefighter",
    "how desert animals find water", "the making of cheese", "how clocks keep time",
    "the importance of clean drinking water", "how wind turbines make power",
    "the story of a lost umbrella", "how a seed becomes a tree", "the value of public parks",
    "how fog forms over a lake", "the daily routine of a baker", "how whales communicate",
    "the history of paper money", "how a camera captures light", "the joy of learning a new language",
    "how earthquakes are measured", "a rainy day in a small town", "how ants organise their colonies",
    "the rise of electric cars", "how tea is grown and harvested",
]

FORMS = {
    "explain": [
        "Explain {t}.", "Give a clear explanation of {t} for a curious teenager.",
        "Explain {t} in plain words.", "Can you explain {t} to someone who has never thought about it?",
    ],
    "list": [
        "List the key facts about {t}.", "Write a list of interesting points about {t}.",
        "Give me a numbered list of things worth knowing about {t}.",
    ],
    "story": [
        "Write a short story that involves {t}.", "Tell a story for children about {t}.",
        "Write a story in which a young girl discovers {t}.",
    ],
    "letter": [
        "Write a letter to a friend telling them about {t}.",
        "Write a letter to the editor of a local newspaper about {t}.",
        "Write a thank-you letter to a teacher who taught you about {t}.",
    ],
    "describe": [
        "Describe {t}.", "Write a vivid description of {t}.",
        "Describe {t} as if you were a nature documentary narrator.",
    ],
    "compare": [
        "Compare {t} today with how people understood it a hundred years ago.",
        "Write a comparison of {t} and one other topic you find related.",
        "Discuss the good and the bad sides of {t}.",
    ],
    "advice": [
        "Give advice to a student who wants to learn about {t}.",
        "What tips would you give a beginner interested in {t}?",
        "Give practical advice connected to {t}.",
    ],
    "argue": [
        "Write a short essay arguing that {t} deserves more attention in schools.",
        "Write an opinion piece about {t}.",
        "Persuade a sceptical reader that {t} is fascinating.",
    ],
    "howto": [
        "Write a step-by-step guide for a school project about {t}.",
        "Write instructions for a simple classroom experiment that shows {t}.",
        "Explain step by step how a museum could present {t} to visitors.",
    ],
}

PARAGRAPHS = [
    "The town of Harlow Bay once depended on fishing. When the fish stocks fell in the 1990s, many families left. A group of residents turned the old harbour warehouses into workshops for boat builders and artists. Tourists began to arrive for the summer markets, and today the harbour is busier than it was thirty years ago, although the fishing fleet has only four boats left.",
    "Mira started keeping a notebook of every bird she saw from her kitchen window. After two years she had recorded forty-one species. She noticed that goldfinches arrived only after she planted thistles, and that the sparrows disappeared when a neighbour's cat moved in. Her notes were later used by a local wildlife group to plan a small nature reserve behind the school.",
    "A bakery in the city centre decided to give away its unsold bread each evening instead of throwing it out. At first only a few people came. Within a month, a queue formed every night, and two other shops joined the scheme. The owner says the bakery now bakes a little less, wastes almost nothing, and has more regular customers than before.",
    "The old stone bridge over the river Tavy was closed after a flood cracked one of its arches. Engineers argued about whether to repair it or build a new steel bridge. The town voted to repair it using the original stone, which took eighteen months and cost more than expected, but the reopened bridge has become a popular place for walks and photographs.",
    "When the village school lost its music teacher, the pupils started a band on their own. They learned from videos, borrowed instruments from parents, and practised in the hall at lunchtime. By the end of the year they played at the summer fair, and the head teacher found money to hire a part-time music teacher again.",
    "Scientists studying a mountain lake found that its water had become clearer over ten years. At first they thought the lake was healthier, but clear water meant fewer algae, and fewer algae meant less food for small fish. The change was traced to a new dam upstream that held back the nutrients the lake had always received.",
    "Tom inherited his grandfather's watch, which had stopped decades ago. A repairer told him the parts were no longer made. Tom spent a winter learning to cut tiny gears by hand. The watch now runs again, losing only a minute a week, and Tom has started repairing clocks for neighbours in his spare time.",
    "A company allowed its staff to work from home two days a week as a trial. Productivity stayed the same, but fewer people left the company that year, and the office needed less space. Some managers missed seeing their teams every day, so the company added a monthly meeting where everyone comes in and shares lunch.",
    "In a dry region, farmers began planting trees between their fields. The trees shaded the soil, slowed the wind and kept more water in the ground. Crop yields dropped slightly in the first years while the trees grew, but after a decade the farms produced more food than before, and the farmers could sell fruit and firewood as well.",
    "The city library started lending tools as well as books: drills, ladders, sewing machines and even a pressure washer. The idea came from a librarian who noticed people asking where to borrow equipment. The tool collection is now the library's most popular service, and it has brought in many people who had not visited in years.",
    "A marathon runner injured her knee a month before a big race. Instead of giving up, she trained in a swimming pool and on a bicycle to keep her fitness. She finished the race twenty minutes slower than her best time but said it was the race she was proudest of, because she had nearly not started at all.",
    "A small island relied on ships to bring fuel for its electricity. When storms delayed the ships, the island went dark. The islanders installed solar panels and a set of batteries on the hill above the harbour. Now the lights stay on during storms, and the money once spent on fuel pays for a new medical clinic.",
    "A museum found that visitors spent less than a minute at most of its paintings. It tried a new idea: a bench and a short written story next to a few paintings, describing the life of the person painted. Visitors began to stay much longer at those works, and the museum now adds stories to a new painting every month.",
    "Two neighbours argued for years about a tall hedge between their gardens. One day a storm knocked down part of the hedge, and they had to clear it together. While working they found they both loved growing tomatoes. They replaced the hedge with a low fence and now share seeds and harvests every summer.",
    "A team of students built a small robot to collect litter on their school field. The first version got stuck in grass and could not tell a leaf from a wrapper. After many changes it used a camera and a simple program trained on photos they took themselves. It now collects about a bag of litter each week.",
    "The ferry between two coastal towns was going to be cancelled because too few people used it. A group of parents pointed out that children used it to reach school, and that the road route took an hour longer. The council kept the ferry but changed its timetable to match school hours, and the number of passengers doubled.",
    "A retired teacher began reading stories aloud at a care home once a week. The residents asked for old adventure novels they remembered from their childhood. Soon some residents started reading to each other, and a few wrote down their own memories, which the care home printed as a small book for families.",
    "A river that ran through an industrial city had been covered over with concrete a century ago. The city decided to uncover a section and rebuild its banks with plants and paths. Within a few years fish returned, summer temperatures in the nearby streets fell, and the new riverside park became a favourite meeting place.",
]

SUMMARY = [
    "Summarise the following paragraph.\\n\\n{p}",
    "Write a summary of this text:\\n\\n{p}",
    "Read the paragraph below and summarise what happened and why it matters.\\n\\n{p}",
]


def main():
    rng = random.Random(2024)
    pairs = [(f, t) for f in FORMS for t in TOPICS]
    rng.shuffle(pairs)
    forms = list(FORMS)
    per_level = {lv: [] for lv in LEVELS}
    used = set()
    # 28 topic prompts per level, the forms rotating so each level mixes them
    for li, lv in enumerate(LEVELS):
        for j in range(28):
            want = forms[(li + j) % len(forms)]
            for k, (f, t) in enumerate(pairs):
                if f == want and (f, t) not in used and t not in {x[2] for x in per_level[lv]}:
                    used.add((f, t))
                    tmpl = rng.choice(FORMS[f])
                    per_level[lv].append((f, tmpl.format(t=t), t))
                    break
            else:
                raise SystemExit("ran out of topic/form pairs")
    for li, lv in enumerate(LEVELS):
        for j in range(2):
            p = PARAGRAPHS[2 * li + j]
            per_level[lv].append(("summary", SUMMARY[(li + j) % len(SUMMARY)].format(p=p), ""))
    print("# kvscope TLG prompt set (scripts/gen-tlg-prompts.py): LEVEL<TAB>FORM<TAB>INSTRUCTION")
    for lv in LEVELS:
        assert len(per_level[lv]) == 30
        for f, text, _ in per_level[lv]:
            assert "\t" not in text and "\n" not in text
            print(f"{lv}\t{f}\t{text}")


if __name__ == "__main__":
    main()
