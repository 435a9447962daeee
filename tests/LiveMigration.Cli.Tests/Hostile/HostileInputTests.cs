using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using CsCheck;
using Xunit.Abstractions;

namespace LiveMigration.Cli.Tests.Hostile;

/// <summary>
/// Issue 13, hostile input: generated bodies, ids, sizes, rates, names and paths thrown at every endpoint of the API and
/// at the lsm commands that change things, on one running cluster. Every answer is a refusal in the project's shape (a
/// 4xx with {code, message}; lsm: exit 2 or 1 with one clear line), never a 500, a hang or a stack trace; and nothing
/// changes: the inventory, the migrations, the members, the files of the storage, the journal's facts.
/// The cases come from CsCheck generators on a fixed seed, so a run repeats; each failure names the seed of its case,
/// and LSM_HOSTILE_SEED=that-seed runs from it (the failing case first).
/// </summary>
[Collection(LocalClusters.Name)]
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class HostileInputTests(HostileCluster cluster, ITestOutputHelper output) : IClassFixture<HostileCluster>
{
    private const string ApiSeed = "2Yf7tXp5hQwK1";
    private const string CliSeed = "d0V2CQlOfZZK1";
    private const int ApiRequests = 400;
    private const int CliRuns = 60;
    private static readonly TimeSpan RequestLimit = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task Generated_requests_to_every_endpoint_are_refused_in_the_error_shape_and_change_nothing()
    {
        var before = await SettledSnapshotAsync();
        var cases = Generate(ApiCases.For(cluster), ApiSeed, ApiRequests);
        using var http = cluster.Session.Http();
        http.Timeout = Timeout.InfiniteTimeSpan;
        var failures = new List<string>();
        var statuses = new SortedDictionary<int, int>();
        foreach (var (seed, request) in cases)
        {
            var (status, problem) = await SendAsync(http, request);
            statuses[status] = statuses.GetValueOrDefault(status) + 1;
            if (problem is not null) failures.Add($"seed {seed}: {request}\n    {problem}");
        }
        output.WriteLine($"{cases.Count} requests (seed {Environment.GetEnvironmentVariable("LSM_HOSTILE_SEED") ?? ApiSeed}); statuses: " +
                         string.Join(", ", statuses.Select(s => $"{s.Key}×{s.Value}")));
        var changes = await ChangesSinceAsync(before);
        Assert.True(failures.Count == 0 && changes is null,
            $"{failures.Count} of {cases.Count} requests were answered wrongly:\n{string.Join("\n", failures.Take(25))}\n{changes}");
    }

    [Fact]
    public async Task Generated_lsm_commands_that_change_things_exit_with_one_clear_line_and_change_nothing()
    {
        var before = await SettledSnapshotAsync();
        var cases = Generate(CliCases.For(cluster), CliSeed, CliRuns);
        // Two at a time: each run is a process start, most of its time the runtime's.
        var results = new CliResult[cases.Count];
        await Parallel.ForEachAsync(Enumerable.Range(0, cases.Count), new ParallelOptions { MaxDegreeOfParallelism = 2 },
            async (i, _) => results[i] = await cluster.Session.Lsm(cases[i].Case));
        var failures = new List<string>();
        var exits = new SortedDictionary<int, int>();
        foreach (var ((seed, arguments), result) in cases.Zip(results))
        {
            exits[result.ExitCode] = exits.GetValueOrDefault(result.ExitCode) + 1;
            if (CliProblem(arguments, result) is { } problem)
                failures.Add($"seed {seed}: lsm {string.Join(' ', arguments.Select(Quote))}\n    {problem}\n    {result.ToString().ReplaceLineEndings("\n    ")}");
        }
        output.WriteLine($"{cases.Count} lsm runs (seed {Environment.GetEnvironmentVariable("LSM_HOSTILE_SEED") ?? CliSeed}); exit codes: " +
                         string.Join(", ", exits.Select(e => $"{e.Key}×{e.Value}")));
        var changes = await ChangesSinceAsync(before);
        Assert.True(failures.Count == 0 && changes is null,
            $"{failures.Count} of {cases.Count} lsm runs ended wrongly:\n{string.Join("\n", failures.Take(25))}\n{changes}");
    }

    /// <summary><paramref name="count"/> cases from one PCG, each with the seed that generates it first.</summary>
    private static IReadOnlyList<(string Seed, T Case)> Generate<T>(Gen<T> gen, string seed, int count)
    {
        var pcg = PCG.Parse(Environment.GetEnvironmentVariable("LSM_HOSTILE_SEED") ?? seed);
        var cases = new List<(string, T)>(count);
        for (var i = 0; i < count; i++)
        {
            var caseSeed = pcg.ToString();
            cases.Add((caseSeed, gen.Generate(pcg, null!, out _)));
        }
        return cases;
    }

    /// <summary>The status, and what is wrong with the answer (null when nothing is).</summary>
    private async Task<(int Status, string? Problem)> SendAsync(HttpClient http, ApiCase request)
    {
        using var message = new HttpRequestMessage(new HttpMethod(request.Method), cluster.Session.Api + request.Target);
        if (request.Body is not null)
        {
            message.Content = new ByteArrayContent(Encoding.UTF8.GetBytes(request.Body));
            if (request.ContentType is not null) message.Content.Headers.ContentType = MediaTypeHeaderValue.Parse(request.ContentType);
        }
        using var limit = new CancellationTokenSource(RequestLimit);
        try
        {
            using var response = await http.SendAsync(message, HttpCompletionOption.ResponseHeadersRead, limit.Token);
            var status = (int)response.StatusCode;
            if (request.Stream && status == 200)
                return (status, response.Content.Headers.ContentType?.MediaType == "text/event-stream" ? null : "a stream answered 200 without text/event-stream");
            var body = await response.Content.ReadAsStringAsync(limit.Token);
            return (status, AnswerProblem(request, status, response.Content.Headers.ContentType?.MediaType, body));
        }
        catch (OperationCanceledException) when (limit.IsCancellationRequested)
        {
            return (0, $"no answer within {RequestLimit.TotalSeconds:0} s");
        }
    }

    private static string? AnswerProblem(ApiCase request, int status, string? mediaType, string body)
    {
        // The API's own answers (JSON, and every refusal); /metrics' text and the dashboard's files are no client's input echoed.
        if ((mediaType == "application/json" || status >= 300) && ShowsInternals(body))
            return $"{status}: the answer shows internals: {Clip(body)}";
        if (status is >= 200 and < 300)
            return request.MayBeOk ? null : $"{status}: accepted input that was not valid: {Clip(body)}";
        if (status is < 400 or >= 500)
            return $"{status}: not a refusal: {Clip(body)}";
        // Kestrel refuses a request line with a NUL, or longer than its limit (8 KiB), itself, before any of the API's code
        // runs: a bare 400 or 414, which no endpoint can shape.
        if (body.Length == 0 && ((status == 400 && request.Target.Contains("%00", StringComparison.Ordinal))
                                 || (status == 414 && request.Target.Length > 8 * 1024)))
            return null;
        if (mediaType != "application/json") return $"{status}: not JSON ({mediaType ?? "no content type"}): {Clip(body)}";
        try
        {
            var json = JsonDocument.Parse(body).RootElement;
            if (json.ValueKind != JsonValueKind.Object
                || !json.TryGetProperty("code", out var code) || code.ValueKind != JsonValueKind.String || string.IsNullOrEmpty(code.GetString())
                || !json.TryGetProperty("message", out var text) || text.ValueKind != JsonValueKind.String || string.IsNullOrEmpty(text.GetString()))
                return $"{status}: not the {{code, message}} shape: {Clip(body)}";
        }
        catch (JsonException)
        {
            return $"{status}: not JSON: {Clip(body)}";
        }
        return null;
    }

    /// <summary>A stack trace, an exception's type, or a type of the code (ours or the framework's) is nothing a client can act on.</summary>
    private static bool ShowsInternals(string text) =>
        text.Contains("   at ", StringComparison.Ordinal) || Regex.IsMatch(text, @"\w+Exception\b|\bLiveMigration\.\w|\bSystem\.[A-Z]");

    /// <summary>Exit 2 (refused input) or 1, one line on stderr saying why (more only where the input itself had line breaks), no trace.</summary>
    private static string? CliProblem(string[] arguments, CliResult result)
    {
        if (ShowsInternals(result.Stdout + result.Stderr))
            return "the output shows internals (a trace, an exception, a type name)";
        // A move of vm1 to the domain it is on is valid and recognisable: lsm says there is nothing to move (and nothing changes).
        if (result.ExitCode == 0 && arguments[0] == "migrate" && result.Stdout.Contains("nothing to move", StringComparison.Ordinal))
            return null;
        if (result.ExitCode is not (1 or 2))
            return $"exit {result.ExitCode}, expected 2 (refused) or 1";
        var lines = result.Stderr.Trim().Split('\n');
        if (!lines[0].StartsWith("lsm: ", StringComparison.Ordinal) || lines[0].Trim().Length <= "lsm:".Length)
            return "stderr does not start with a message";
        var breaksInInput = arguments.Sum(a => a.Count(c => c is '\n' or '\r'));
        if (lines.Length > 1 + breaksInInput)
            return $"{lines.Length} lines on stderr, expected one";
        return null;
    }

    private async Task<IReadOnlyList<string>> SettledSnapshotAsync()
    {
        // Reports of what the fixture made may still be arriving: wait until two looks a second apart agree.
        var previous = await ClusterSnapshot.TakeAsync(cluster);
        for (var i = 0; i < 30; i++)
        {
            await Task.Delay(TimeSpan.FromSeconds(1));
            var next = await ClusterSnapshot.TakeAsync(cluster);
            if (next.SequenceEqual(previous)) return next;
            previous = next;
        }
        throw new InvalidOperationException($"the cluster did not settle in 30 s\n{cluster.Session.LogTails()}");
    }

    /// <summary>What the comparison covers, for the log: how many lines of each kind, and the journal's as they are.</summary>
    private void Describe(IReadOnlyList<string> snapshot) =>
        output.WriteLine("compared: " + string.Join(", ", snapshot.GroupBy(l => l.Split(' ')[0]).Select(g => $"{g.Key} {g.Count()}")) + "\n  "
                         + string.Join("\n  ", snapshot.Where(l => l.StartsWith("journal ", StringComparison.Ordinal))));

    /// <summary>What hostile input changed (null: nothing): in the cluster, or a file or folder made where a path escaped to.</summary>
    private async Task<string?> ChangesSinceAsync(IReadOnlyList<string> before)
    {
        var after = await SettledSnapshotAsync();
        Describe(after);
        var leaked = new[] { "/etc", "/tmp", cluster.Session.DataDirectory }
            .SelectMany(place => Directory.EnumerateFileSystemEntries(place, HostileValues.Marker + "*"))
            .Concat(Directory.EnumerateFileSystemEntries(cluster.EscapeTarget))
            .ToList();
        return before.SequenceEqual(after) && leaked.Count == 0
            ? null
            : "hostile input changed the cluster:\n" + ClusterSnapshot.Difference(before, after) + string.Concat(leaked.Select(l => "\n+ made " + l));
    }

    private static string Clip(string text) => text.Length > 300 ? text[..300] + "…" : text;

    private static string Quote(string argument) => argument.Length > 0 && argument.All(c => char.IsLetterOrDigit(c) || c is '-' or '_' or '.' or '/' or '@' or ':')
        ? argument
        : JsonSerializer.Serialize(argument.Length > 200 ? argument[..200] + "…" : argument);
}
