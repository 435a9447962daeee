using System.Collections.Concurrent;
using System.Net.Http.Json;
using System.Text.Json;
using Microsoft.Playwright;
using LiveMigration.Cli.Tests;
using Xunit.Abstractions;

namespace LiveMigration.Dashboard.Tests;

/// <summary>
/// The dashboard in a real browser: Debian's chromium driven by Playwright (headless; Playwright never downloads
/// a browser of its own), against the real cluster.
/// </summary>
[Collection(DashboardCollection.Name)]
public sealed class DashboardBrowserTests(DashboardCluster cluster, ITestOutputHelper output) : IAsyncLifetime
{
    private const string Chromium = "/usr/bin/chromium";
    private IPlaywright _playwright = null!;
    private IBrowser _browser = null!;
    private readonly ConcurrentQueue<string> _pageErrors = new();

    public async Task InitializeAsync()
    {
        Environment.SetEnvironmentVariable("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1");
        Assert.True(File.Exists(Chromium), $"{Chromium} is missing: apt-get install chromium");
        _playwright = await Playwright.CreateAsync();
        // Root has no user namespace sandbox here; the page is our own.
        _browser = await _playwright.Chromium.LaunchAsync(new() { ExecutablePath = Chromium, Headless = true, Args = ["--no-sandbox"] });
    }

    public async Task DisposeAsync()
    {
        await _browser.DisposeAsync();
        _playwright.Dispose();
    }

    private async Task<IPage> OpenPageAsync()
    {
        var page = await _browser.NewPageAsync(new() { ViewportSize = new() { Width = 1360, Height = 1100 } });
        page.PageError += (_, error) => _pageErrors.Enqueue(error);
        // Chromium also logs every non-2xx answer as an error ("Failed to load resource"): the page handles those.
        page.Console += (_, message) =>
        {
            if (message.Type == "error" && !message.Text.StartsWith("Failed to load resource", StringComparison.Ordinal)) _pageErrors.Enqueue(message.Text);
        };
        return page;
    }

    [Fact]
    public async Task The_page_shows_the_cluster_and_moves_a_disk_through_the_dialog_to_completed()
    {
        var (current, destination) = await cluster.SettledDiskAsync();
        var page = await OpenPageAsync();
        await page.GotoAsync(cluster.Api + "/");

        // Hosts (host-1 runs the SPM), both domains with their usage, the VM with its disk and 3-layer chain.
        await Assertions.Expect(page.Locator("#hosts tr[data-host='host-1']")).ToContainTextAsync("SPM");
        await Assertions.Expect(page.Locator("#domains tr[data-domain]")).ToHaveCountAsync(2);
        await Assertions.Expect(page.Locator("#domains")).ToContainTextAsync("domain-b");
        var vm = page.Locator($"[data-vm='{cluster.Cluster.Vm}']");
        await Assertions.Expect(vm).ToContainTextAsync("cli-vm");
        await Assertions.Expect(vm).ToContainTextAsync("running");
        var disk = vm.Locator($"tr[data-disk='{cluster.Cluster.Image}']");
        await Assertions.Expect(disk.Locator(".layer")).ToHaveCountAsync(3);
        await Assertions.Expect(disk.Locator(".disk-domain")).ToHaveTextAsync(cluster.DomainName(current));
        await Assertions.Expect(page.Locator("#stream-state")).ToHaveTextAsync("live");

        // Every migration there is before this move (earlier tests' moves of this disk, all finished), as the API lists them:
        // the page may list them too, and the new one is the other.
        var listed = await cluster.Http.GetFromJsonAsync<JsonElement>($"{cluster.Api}/api/migrations");
        var earlier = listed.GetProperty("migrations").EnumerateArray().Select(m => m.GetProperty("id").GetString()!).ToList();

        // Move: the dialog offers the other domain, a strategy, a bandwidth and a copy mode.
        await disk.GetByRole(AriaRole.Button, new() { Name = "Move" }).ClickAsync();
        var dialog = page.Locator("#move-dialog");
        await Assertions.Expect(dialog).ToBeVisibleAsync();
        await page.Locator("#move-destination").SelectOptionAsync(destination);
        await page.Locator("#move-strategy").SelectOptionAsync("pre-copy");
        // 8 MiB/s: the copy takes a few seconds, so the page sees it running before it completes.
        await page.Locator("#move-bandwidth").FillAsync("8");
        await page.Locator("#move-copy-mode").SelectOptionAsync("background");
        await page.Locator("#move-submit").ClickAsync();
        await Assertions.Expect(dialog).ToBeHiddenAsync();

        // The migration appears and its progress reaches completed from the event stream, without a reload. Found as the
        // one the page did not list before: "the first" was an earlier, completed move until the new one showed.
        var migration = page.Locator("[data-migration]" + string.Concat(earlier.Select(id => $":not([data-migration='{id}'])")));
        await Assertions.Expect(migration).ToBeVisibleAsync();
        await Assertions.Expect(migration.Locator(".status")).ToHaveTextAsync("completed", new() { Timeout = 90_000 });
        await Assertions.Expect(migration.Locator(".migration-disk .bar")).ToHaveAttributeAsync("aria-valuenow", "100");
        await Assertions.Expect(migration.Locator(".steps li.done").Filter(new() { HasText = "Pivot" })).ToHaveCountAsync(1);
        // Updated by the live stream (each event counted by the page), not by the answer to its POST alone.
        var streamEvents = int.Parse(await migration.GetAttributeAsync("data-events") ?? "0");
        Assert.True(streamEvents >= 2, $"the page took {streamEvents} events of /api/migrations/events for this migration; expected its running and completed states");
        // The inventory follows: the disk is on the destination now.
        await Assertions.Expect(disk.Locator(".disk-domain")).ToHaveTextAsync(cluster.DomainName(destination), new() { Timeout = 30_000 });

        var artifacts = Path.Combine(AppContext.BaseDirectory, "artifacts");
        Directory.CreateDirectory(artifacts);
        var screenshot = Path.Combine(artifacts, "dashboard-migration-completed.png");
        await page.ScreenshotAsync(new() { Path = screenshot, FullPage = true });
        output.WriteLine($"screenshot: {screenshot}");
        Console.WriteLine($"dashboard screenshot: {screenshot}");
        Assert.True(new FileInfo(screenshot).Length > 10_000, $"the screenshot {screenshot} is nearly empty");
        Assert.Empty(_pageErrors);
        await cluster.SettledDiskAsync(expectedDomain: destination);
    }

    [Fact]
    public async Task A_running_disk_shows_its_copy_rate_over_time_beside_its_bar_timed_by_the_coordinator()
    {
        // The live stream as the Coordinator sends it, here made up so the rates are known: a mirror that started at T0
        // and has copied 2, 4 and 7 MiB at T0+1 s, +2 s, +3 s (whenever the page happens to read them).
        var id = Guid.NewGuid().ToString();
        var image = Guid.NewGuid().ToString();
        var t0 = DateTimeOffset.UtcNow.AddMinutes(-1);
        string Event(int second, long mib, bool finished = false) => "event: migration\ndata: " + System.Text.Json.JsonSerializer.Serialize(new
        {
            id, vm = Guid.NewGuid().ToString(), status = finished ? "completed" : "running", finished, strategy = "pre-copy",
            requestedAt = t0, updatedAt = t0.AddSeconds(second),
            disks = new[]
            {
                new
                {
                    image, source = Guid.NewGuid().ToString(), destination = Guid.NewGuid().ToString(), phase = "InFlight",
                    step = "WaitMirrorReady", attempt = 1, done = mib << 20, total = 16L << 20,
                    timings = new[] { new { step = "WaitMirrorReady", attempt = 1, startedAt = t0 } },
                },
            },
        }) + "\n\n";
        var page = await OpenPageAsync();
        var ended = false; // then each re-read of the stream says the migration completed
        await page.RouteAsync("**/api/migrations/events", route => route.FulfillAsync(new()
        {
            Status = 200, ContentType = "text/event-stream",
            Body = Volatile.Read(ref ended) ? Event(4, 16, finished: true) : Event(1, 2) + Event(2, 4) + Event(3, 7),
        }));
        await page.GotoAsync(cluster.Api + "/");

        var disk = page.Locator($"[data-migration='{id}'] .migration-disk");
        var chart = disk.Locator(".rate-chart");
        await Assertions.Expect(chart).ToHaveAttributeAsync("data-points", "3");
        // 2 MiB in the first second (from the step's start), 2 in the next, 3 in the last: the last rate is written out
        await Assertions.Expect(disk.Locator(".rate-now")).ToHaveTextAsync("3.0 MiB/s");
        var points = (await chart.Locator("polyline").GetAttributeAsync("points"))!.Split(' ')
            .Select(p => p.Split(',').Select(v => double.Parse(v, System.Globalization.CultureInfo.InvariantCulture)).ToArray()).ToList();
        Assert.Equal(3, points.Count);
        Assert.True(points[0][0] < points[1][0] && points[1][0] < points[2][0], "the points go forward in time");
        Assert.Equal(points[0][1], points[1][1], 1); // the same rate twice: the same height
        Assert.True(points[2][1] < points[1][1], "the faster last second is drawn higher");
        // The page re-reads the stream (it ended): the same updates again add nothing.
        await page.WaitForTimeoutAsync(2500);
        await Assertions.Expect(chart).ToHaveAttributeAsync("data-points", "3");
        var artifacts = Path.Combine(AppContext.BaseDirectory, "artifacts");
        Directory.CreateDirectory(artifacts);
        // the whole page: the stream's reconnects re-render the migration, so an element shot could meet a detached node
        await page.ScreenshotAsync(new() { Path = Path.Combine(artifacts, "dashboard-rate-chart.png"), FullPage = true });
        // Completed: the line goes with the running copy, and the page lets go of its samples.
        Volatile.Write(ref ended, true);
        await Assertions.Expect(page.Locator($"[data-migration='{id}'] .status")).ToHaveTextAsync("completed");
        await Assertions.Expect(chart).ToHaveCountAsync(0);
        Assert.Empty(_pageErrors);
    }

    [Fact]
    public async Task With_a_token_required_the_page_asks_for_it_and_every_api_call_then_carries_it()
    {
        const string Token = "dashboard-test-token";
        var page = await OpenPageAsync();
        // The Coordinator's answer to a request without its token, given here for every API call that lacks it.
        var calls = new ConcurrentQueue<(string Url, string? Authorization)>();
        await page.RouteAsync("**/api/**", async route =>
        {
            var authorization = route.Request.Headers.TryGetValue("authorization", out var value) ? value : null;
            calls.Enqueue((route.Request.Url, authorization));
            if (authorization == $"Bearer {Token}")
                await route.ContinueAsync();
            else
                await route.FulfillAsync(new() { Status = 401, ContentType = "application/json", Body = "{\"code\":\"UNAUTHORIZED\",\"message\":\"this API needs a token\"}" });
        });

        await page.GotoAsync(cluster.Api + "/");
        var tokenDialog = page.Locator("#token-dialog");
        await Assertions.Expect(tokenDialog).ToBeVisibleAsync();
        Assert.All(calls, c => Assert.Null(c.Authorization));
        var before = calls.Count;

        await page.Locator("#token-input").FillAsync(Token);
        await page.Locator("#token-submit").ClickAsync();
        await Assertions.Expect(tokenDialog).ToBeHiddenAsync();
        await Assertions.Expect(page.Locator("#hosts tr[data-host='host-1']")).ToBeVisibleAsync();
        await Assertions.Expect(page.Locator($"[data-vm='{cluster.Cluster.Vm}']")).ToContainTextAsync("cli-vm");
        await Assertions.Expect(page.Locator("#stream-state")).ToHaveTextAsync("live");

        var after = calls.Skip(before).ToList();
        Assert.Contains(after, c => c.Url.EndsWith("/api/migrations/events"));
        Assert.All(after, c => Assert.Equal($"Bearer {Token}", c.Authorization));
        Assert.Equal(Token, await page.EvaluateAsync<string>("sessionStorage.getItem('lsm-token')"));
        Assert.Empty(_pageErrors);
    }

    [Fact]
    public async Task The_link_lsm_local_up_prints_carries_the_token_in_its_fragment_and_the_page_takes_it_without_asking()
    {
        await using var coordinator = new TokenCoordinatorScope();
        await coordinator.Fixture.InitializeAsync();
        var page = await OpenPageAsync();
        var statuses = new ConcurrentQueue<int>();
        page.Response += (_, response) =>
        {
            if (response.Url.Contains("/api/", StringComparison.Ordinal)) statuses.Enqueue(response.Status);
        };

        await page.GotoAsync(coordinator.Fixture.Api + "/#token=" + Uri.EscapeDataString(TokenCoordinator.Token));
        await Assertions.Expect(page.Locator("#stream-state")).ToHaveTextAsync("live");
        Assert.False(await page.Locator("#token-dialog").IsVisibleAsync());
        Assert.DoesNotContain(401, statuses);
        // the token left the address bar, and stays in the tab's session only
        Assert.DoesNotContain("token", page.Url);
        Assert.Equal(TokenCoordinator.Token, await page.EvaluateAsync<string>("sessionStorage.getItem('lsm-token')"));
        Assert.Empty(_pageErrors);
    }

    [Fact]
    public async Task Against_a_coordinator_that_requires_a_token_the_page_gets_401_asks_for_it_and_then_works()
    {
        await using var coordinator = new TokenCoordinatorScope();
        await coordinator.Fixture.InitializeAsync();
        var page = await OpenPageAsync();
        var answers = new ConcurrentQueue<(string Url, int Status, string? Authorization)>();
        page.Response += (_, response) =>
        {
            if (!response.Url.Contains("/api/", StringComparison.Ordinal)) return;
            var authorization = response.Request.Headers.TryGetValue("authorization", out var value) ? value : null;
            answers.Enqueue((response.Url, response.Status, authorization));
        };

        // The page itself is open; its API calls are refused by the Coordinator's own token check.
        await page.GotoAsync(coordinator.Fixture.Api + "/");
        var tokenDialog = page.Locator("#token-dialog");
        await Assertions.Expect(tokenDialog).ToBeVisibleAsync();
        Assert.Contains(answers, a => a.Status == 401 && a.Authorization is null);

        await page.Locator("#token-input").FillAsync(TokenCoordinator.Token);
        await page.Locator("#token-submit").ClickAsync();
        await Assertions.Expect(tokenDialog).ToBeHiddenAsync();
        await Assertions.Expect(page.Locator("#stream-state")).ToHaveTextAsync("live");
        var authorized = answers.Where(a => a.Authorization == $"Bearer {TokenCoordinator.Token}").ToList();
        Assert.NotEmpty(authorized);
        Assert.All(authorized, a => Assert.Equal(200, a.Status));
        Assert.Empty(_pageErrors);
    }

    [Fact]
    public async Task With_the_viewer_token_the_page_reads_everything_and_its_Move_shows_the_403_message()
    {
        await using var coordinator = new TokenCoordinatorScope();
        await coordinator.Fixture.InitializeAsync();
        var page = await OpenPageAsync();
        var answers = new ConcurrentQueue<(string Url, string Method, int Status)>();
        page.Response += (_, response) =>
        {
            if (response.Url.Contains("/api/", StringComparison.Ordinal)) answers.Enqueue((response.Url, response.Request.Method, response.Status));
        };
        // A lone Coordinator has no VM: the page is shown one (two domains, a running VM with a disk) so that it offers
        // Move; the move itself goes to the real Coordinator with the viewer's token.
        const string DomainA = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d", DomainB = "f0e1d2c3-b4a5-4968-8776-655443322110";
        const string Image = "0c5e8f21-7a4b-4d93-b1e6-9a2c3d4e5f60";
        await page.RouteAsync("**/api/domains", route => route.FulfillAsync(new()
        {
            Status = 200, ContentType = "application/json",
            Body = $$"""{"domains":[{"id":"{{DomainA}}","name":"domain-a","kind":"file","capacityBytes":1073741824,"usedBytes":0,"availableBytes":1073741824,"active":true},{"id":"{{DomainB}}","name":"domain-b","kind":"file","capacityBytes":1073741824,"usedBytes":0,"availableBytes":1073741824,"active":true}]}""",
        }));
        await page.RouteAsync(new System.Text.RegularExpressions.Regex(@"/api/vms(\?.*)?$"), route => route.FulfillAsync(new()
        {
            Status = 200, ContentType = "application/json",
            Body = $$"""{"vms":[{"id":"b3a9e1c4-5d2f-4e8a-8c6b-1f7d9e0a2b33","name":"viewer-vm","host":"host-1","running":true,"disks":[{"image":"{{Image}}","capacityBytes":67108864,"allocatedBytes":0,"domain":"{{DomainA}}","chain":[{"domain":"{{DomainA}}","image":"{{Image}}","volume":"9f8e7d6c-5b4a-4392-8190-7f6e5d4c3b2a"}],"migration":null}]}]}""",
        }));

        await page.GotoAsync(coordinator.Fixture.Api + "/#token=" + Uri.EscapeDataString(TokenCoordinator.ViewerToken));
        await Assertions.Expect(page.Locator("#stream-state")).ToHaveTextAsync("live");
        Assert.False(await page.Locator("#token-dialog").IsVisibleAsync());
        Assert.All(answers, a => Assert.True(a.Status == 200, $"{a.Method} {a.Url}: {a.Status}"));

        await page.Locator($"tr[data-disk='{Image}']").GetByRole(AriaRole.Button, new() { Name = "Move" }).ClickAsync();
        await page.Locator("#move-submit").ClickAsync();
        var error = page.Locator("#move-error");
        await Assertions.Expect(error).ToBeVisibleAsync();
        await Assertions.Expect(error).ToContainTextAsync("FORBIDDEN: this token is a viewer token");
        await Assertions.Expect(page.Locator("#move-dialog")).ToBeVisibleAsync();
        Assert.Contains(answers, a => a.Method == "POST" && a.Url.EndsWith("/api/migrations", StringComparison.Ordinal) && a.Status == 403);
        Assert.Empty(_pageErrors);
    }

    [Fact]
    public async Task A_pool_of_many_vms_is_listed_a_page_at_a_time_and_the_search_box_finds_one()
    {
        var page = await OpenPageAsync();
        // 120 VMs answered as the API pages and filters them (name order, ?limit, ?offset, ?q), on the real cluster's page
        var all = Enumerable.Range(0, 120).Select(i => (Id: $"00000000-0000-4000-8000-{i:D12}", Name: $"tenant-{i:D3}")).ToList();
        var asked = new ConcurrentQueue<string>();
        await page.RouteAsync(new System.Text.RegularExpressions.Regex(@"/api/vms(\?.*)?$"), route =>
        {
            var query = System.Web.HttpUtility.ParseQueryString(new Uri(route.Request.Url).Query);
            asked.Enqueue(new Uri(route.Request.Url).Query);
            var matching = all.Where(v => query["q"] is not { } q || v.Name.Contains(q, StringComparison.OrdinalIgnoreCase)).ToList();
            var (offset, limit) = (int.Parse(query["offset"] ?? "0"), int.Parse(query["limit"] ?? "5000"));
            var vms = matching.Skip(offset).Take(limit).Select(v => $$"""{"id":"{{v.Id}}","name":"{{v.Name}}","host":"host-1","running":true,"disks":[]}""");
            return route.FulfillAsync(new()
            {
                Status = 200, ContentType = "application/json",
                Body = $$"""{"vms":[{{string.Join(",", vms)}}],"total":{{matching.Count}},"offset":{{offset}},"limit":{{limit}}}""",
            });
        });
        await page.GotoAsync(cluster.Api + "/");

        var info = page.Locator("#vm-page-info");
        await Assertions.Expect(info).ToHaveTextAsync("1–50 of 120 VMs");
        await Assertions.Expect(page.Locator("#vms article.vm")).ToHaveCountAsync(50);
        await Assertions.Expect(page.Locator("#vm-page-prev")).ToBeDisabledAsync();

        await page.Locator("#vm-page-next").ClickAsync();
        await Assertions.Expect(info).ToHaveTextAsync("51–100 of 120 VMs");
        await Assertions.Expect(page.Locator("#vms article.vm").First).ToContainTextAsync("tenant-050");
        await page.Locator("#vm-page-next").ClickAsync();
        await Assertions.Expect(info).ToHaveTextAsync("101–120 of 120 VMs");
        await Assertions.Expect(page.Locator("#vm-page-next")).ToBeDisabledAsync();

        // the search box asks the API for the matching VMs, from the first page
        await page.Locator("#vm-filter").FillAsync("tenant-11");
        await Assertions.Expect(info).ToHaveTextAsync("1–10 of 10 VMs matching");
        await Assertions.Expect(page.Locator("#vms article.vm").First).ToContainTextAsync("tenant-110");
        Assert.Contains(asked, q => q.Contains("q=tenant-11", StringComparison.Ordinal) && q.Contains("offset=0", StringComparison.Ordinal));
        await page.Locator("#vm-filter").FillAsync("nobody");
        await Assertions.Expect(info).ToHaveTextAsync("no VM matches");
        Assert.Empty(_pageErrors);
    }

    [Fact]
    public async Task A_disk_whose_chain_lies_on_two_domains_is_marked_split_and_says_which_move_makes_it_whole()
    {
        var page = await OpenPageAsync();
        const string DomainA = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d", DomainB = "f0e1d2c3-b4a5-4968-8776-655443322110";
        const string Split = "0c5e8f21-7a4b-4d93-b1e6-9a2c3d4e5f60", Whole = "1d6f9032-8b5c-4ea4-82f7-0b3d4e5f6071";
        await page.RouteAsync("**/api/domains", route => route.FulfillAsync(new()
        {
            Status = 200, ContentType = "application/json",
            Body = $$"""{"domains":[{"id":"{{DomainA}}","name":"domain-a","kind":"file","capacityBytes":1073741824,"usedBytes":0,"availableBytes":1073741824,"active":true},{"id":"{{DomainB}}","name":"domain-b","kind":"file","capacityBytes":1073741824,"usedBytes":0,"availableBytes":1073741824,"active":true}]}""",
        }));
        // an abandoned post-copy's disk (base on A, leaf on B) beside a whole one
        await page.RouteAsync(new System.Text.RegularExpressions.Regex(@"/api/vms(\?.*)?$"), route => route.FulfillAsync(new()
        {
            Status = 200, ContentType = "application/json",
            Body = $$"""{"vms":[{"id":"b3a9e1c4-5d2f-4e8a-8c6b-1f7d9e0a2b33","name":"split-vm","host":"host-1","running":true,"disks":[{"image":"{{Split}}","capacityBytes":67108864,"allocatedBytes":0,"domain":"{{DomainB}}","chain":[{"domain":"{{DomainA}}","image":"{{Split}}","volume":"9f8e7d6c-5b4a-4392-8190-7f6e5d4c3b2a"},{"domain":"{{DomainB}}","image":"{{Split}}","volume":"8e7d6c5b-4a39-4281-907f-6e5d4c3b2a19"}],"migration":null},{"image":"{{Whole}}","capacityBytes":67108864,"allocatedBytes":0,"domain":"{{DomainA}}","chain":[{"domain":"{{DomainA}}","image":"{{Whole}}","volume":"7d6c5b4a-3928-4170-8f6e-5d4c3b2a1908"}],"migration":null}]}],"total":1,"offset":0,"limit":50}""",
        }));
        await page.GotoAsync(cluster.Api + "/");

        var split = page.Locator($"tr[data-disk='{Split}'] .disk-domain");
        await Assertions.Expect(split).ToContainTextAsync("domain-b");
        await Assertions.Expect(split.Locator(".split")).ToHaveTextAsync("split");
        await Assertions.Expect(split.Locator(".split")).ToHaveAttributeAsync("title", "Older layers on domain-a: a post-copy to domain-b makes it whole");
        await Assertions.Expect(page.Locator($"tr[data-disk='{Whole}'] .disk-domain .split")).ToHaveCountAsync(0);

        // Its Move dialog offers its one move: a post-copy to its leaf's domain (what the page posts, answered here).
        string? posted = null;
        await page.RouteAsync("**/api/migrations", async route =>
        {
            if (route.Request.Method != "POST") { await route.ContinueAsync(); return; }
            posted = route.Request.PostData;
            await route.FulfillAsync(new() { Status = 409, ContentType = "application/json", Body = """{"code":"TEST","message":"answered by the test"}""" });
        });
        var dialog = page.Locator("#move-dialog");
        await page.Locator($"tr[data-disk='{Split}']").GetByRole(AriaRole.Button, new() { Name = "Move" }).ClickAsync();
        await Assertions.Expect(dialog).ToBeVisibleAsync();
        await Assertions.Expect(page.Locator("#move-subject")).ToContainTextAsync("over older layers on domain-a: a post-copy to domain-b makes it whole");
        await Assertions.Expect(page.Locator("#move-destination option")).ToHaveCountAsync(1);
        await Assertions.Expect(page.Locator("#move-destination")).ToHaveValueAsync(DomainB);
        await Assertions.Expect(page.Locator("#move-strategy")).ToHaveValueAsync("post-copy");
        await Assertions.Expect(page.Locator("#move-strategy")).ToBeDisabledAsync();
        await page.Locator("#move-submit").ClickAsync();
        await Assertions.Expect(page.Locator("#move-error")).ToHaveTextAsync("TEST: answered by the test");
        var body = JsonDocument.Parse(posted!).RootElement;
        Assert.Equal("post-copy", body.GetProperty("strategy").GetString());
        Assert.Equal(DomainB, body.GetProperty("disks")[0].GetProperty("destination").GetString());
        Assert.Equal(Split, body.GetProperty("disks")[0].GetProperty("image").GetString());
        await page.Locator("#move-cancel").ClickAsync();

        // A whole disk's dialog is as before: the other domains, any strategy.
        await page.Locator($"tr[data-disk='{Whole}']").GetByRole(AriaRole.Button, new() { Name = "Move" }).ClickAsync();
        await Assertions.Expect(page.Locator("#move-destination option")).ToHaveCountAsync(1);
        await Assertions.Expect(page.Locator("#move-destination")).ToHaveValueAsync(DomainB);
        await Assertions.Expect(page.Locator("#move-strategy")).ToBeEnabledAsync();
        await page.Locator("#move-cancel").ClickAsync();
        Assert.Empty(_pageErrors);
    }

    [Fact]
    public async Task A_migration_card_changes_its_speed_cancels_resumes_and_abandons_through_the_api_and_shows_a_refusal()
    {
        // Three migrations as the live stream sends them (made up): one running at 8 MiB/s, one suspended, one completed.
        string Running = Guid.NewGuid().ToString(), Suspended = Guid.NewGuid().ToString(), Completed = Guid.NewGuid().ToString();
        var t0 = DateTimeOffset.UtcNow.AddMinutes(-1);
        string Event(string id, string status, bool finished, long speed) => "event: migration\ndata: " + JsonSerializer.Serialize(new
        {
            id, vm = Guid.NewGuid().ToString(), status, finished, strategy = "pre-copy", requestedAt = t0, updatedAt = t0,
            bandwidthBytesPerSecond = speed, copyMode = "background", maxParallelDisks = 1,
            disks = new[] { new { image = Guid.NewGuid().ToString(), source = Guid.NewGuid().ToString(), destination = Guid.NewGuid().ToString(),
                phase = finished ? "Completed" : "InFlight", step = "WaitMirrorReady", attempt = 1, done = 1L << 20, total = 16L << 20, timings = Array.Empty<object>() } },
        }) + "\n\n";
        var page = await OpenPageAsync();
        await page.RouteAsync("**/api/migrations/events", route => route.FulfillAsync(new()
        {
            Status = 200, ContentType = "text/event-stream",
            Body = Event(Running, "running", false, 8L << 20) + Event(Suspended, "suspended at Pivot of disk 0c5e8f21", false, 0) + Event(Completed, "completed", true, 0),
        }));
        // What the page asks of them, answered here: a cancel is refused as the API refuses one past its point of no return.
        var asked = new ConcurrentQueue<(string Action, string? Body)>();
        await page.RouteAsync(new System.Text.RegularExpressions.Regex(@"/api/migrations/[0-9a-f-]{36}/(speed|cancel|resume|abandon)$"), async route =>
        {
            var action = route.Request.Url[(route.Request.Url.LastIndexOf('/') + 1)..];
            var id = route.Request.Url.Split('/')[^2];
            asked.Enqueue((id + "/" + action, route.Request.PostData));
            await (action == "cancel"
                ? route.FulfillAsync(new() { Status = 409, ContentType = "application/json", Body = """{"code":"POINT_OF_NO_RETURN_PASSED","message":"disk 0c5e8f21 passed its point of no return (Pivot)"}""" })
                : route.FulfillAsync(new() { Status = 200, ContentType = "application/json", Body = $$"""{"id":"{{id}}","message":"accepted"}""" }));
        });
        string? dialogAnswer = null; // null: dismiss; else accept (a prompt with this text)
        page.Dialog += async (_, dialog) =>
        {
            if (dialogAnswer is null) await dialog.DismissAsync();
            else await dialog.AcceptAsync(dialogAnswer);
        };
        await page.GotoAsync(cluster.Api + "/");

        var running = page.Locator($"[data-migration='{Running}']");
        await Assertions.Expect(running.Locator(".migration-head")).ToContainTextAsync("limit 8.0 MiB/s");
        await Assertions.Expect(page.Locator($"[data-migration='{Completed}'] .migration-action")).ToHaveCountAsync(0);
        await Assertions.Expect(running.Locator("[data-action='Resume']")).ToHaveCountAsync(0);

        // Speed: the prompt's MiB/s in bytes per second
        dialogAnswer = "12.5";
        await running.Locator("[data-action='Speed']").ClickAsync();
        await WaitForAsync(() => asked.Count == 1);
        Assert.Equal(Running + "/speed", asked.Last().Action);
        Assert.Equal(13_107_200, JsonDocument.Parse(asked.Last().Body!).RootElement.GetProperty("bytesPerSecond").GetInt64());
        // a speed that is not one is said on the card and asks nothing
        dialogAnswer = "fast";
        await running.Locator("[data-action='Speed']").ClickAsync();
        await Assertions.Expect(running.Locator(".action-error")).ToContainTextAsync("'fast' is not a speed in MiB/s");
        // Cancel dismissed at its question asks nothing; confirmed, the API's refusal is shown on the card
        dialogAnswer = null;
        await running.Locator("[data-action='Cancel']").ClickAsync();
        dialogAnswer = "";
        await running.Locator("[data-action='Cancel']").ClickAsync();
        await Assertions.Expect(running.Locator(".action-error")).ToHaveTextAsync("POINT_OF_NO_RETURN_PASSED: disk 0c5e8f21 passed its point of no return (Pivot)");
        Assert.Equal([Running + "/speed", Running + "/cancel"], asked.Select(a => a.Action));

        // A suspended migration offers resume and abandon (after its question), not speed or cancel
        var suspended = page.Locator($"[data-migration='{Suspended}']");
        await Assertions.Expect(suspended.Locator("[data-action='Cancel']")).ToHaveCountAsync(0);
        await suspended.Locator("[data-action='Resume']").ClickAsync();
        await WaitForAsync(() => asked.Count == 3);
        await suspended.Locator("[data-action='Abandon']").ClickAsync();
        await WaitForAsync(() => asked.Count == 4);
        Assert.Equal([Running + "/speed", Running + "/cancel", Suspended + "/resume", Suspended + "/abandon"], asked.Select(a => a.Action));
        Assert.Empty(_pageErrors);
    }

    private static async Task WaitForAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "timed out");
            await Task.Delay(50);
        }
    }

    /// <summary>A lone Coordinator with a token for one test, stopped by its pid at the end.</summary>
    private sealed class TokenCoordinatorScope : IAsyncDisposable
    {
        public TokenCoordinator Fixture { get; } = new();
        public ValueTask DisposeAsync() => new(Fixture.DisposeAsync());
    }
}
