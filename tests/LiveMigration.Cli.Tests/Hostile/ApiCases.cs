using System.Text.Json;
using CsCheck;
using static LiveMigration.Cli.Tests.Hostile.HostileValues;

namespace LiveMigration.Cli.Tests.Hostile;

/// <summary>One request to the API.</summary>
/// <param name="Target">The path and query as sent (ids in it escaped or, on purpose, raw).</param>
/// <param name="MayBeOk">The input was in fact valid: a read, or a request that names what exists and asks nothing that changes it.</param>
/// <param name="Stream">An event stream: a 200 is read no further than its headers.</param>
public sealed record ApiCase(string Method, string Target, string? Body, string? ContentType, bool MayBeOk = false, bool Stream = false)
{
    public override string ToString() =>
        $"{Method} {Target}" + (ContentType is null ? "" : $" [{ContentType}]") + (Body is null ? "" : $" {(Body.Length > 600 ? Body[..600] + $"… ({Body.Length} chars)" : Body)}");
}

/// <summary>
/// Generated requests for every endpoint of the Coordinator (src/Coordinator/Api/*Endpoints.cs, the dashboard, health,
/// metrics). A generated request never asks for a change that could succeed: what exists (vm1, its disk, sdA, sdB,
/// host-1) is mixed in only beside a part that is wrong for sure, and a migration never goes to sdB, the one place it could.
/// </summary>
public static class ApiCases
{
    public static Gen<ApiCase> For(HostileCluster cluster)
    {
        var vmRef = Gen.OneOf(cluster.VmId, HostileCluster.VmName);
        var idInPath = Gen.Frequency((5, Id.Select(Uri.EscapeDataString)), (1, Id.Where(SafeRaw)));
        var postBodyShape = PostBody();

        var reads = Gen.OneOf(
            "/api/hosts", "/api/domains", "/api/vms", "/api/inventory", "/api/cluster", "/api/cluster/sharding/regions", "/api/migrations",
            "/api/migrations?active=true", "/metrics", "/healthz", "/healthz/live", "/healthz/ready", "/", "/index.html", "/dashboard.js")
            .SelectMany(path => Gen.Frequency((3, Gen.Const(path)), (1, Text.Select(q => $"{path}{(path.Contains('?') ? '&' : '?')}x={Uri.EscapeDataString(q)}"))))
            .Select(path => new ApiCase("GET", path, null, null, MayBeOk: true));
        var activeFilter = Text.Where(t => t is not ("true" or "false"))
            .Select(t => new ApiCase("GET", "/api/migrations?active=" + Uri.EscapeDataString(t), null, null));
        var vmLookups = Gen.Frequency(
            (3, Gen.Select(idInPath, Gen.OneOf("", "/io")).Select((id, tail) => new ApiCase("GET", $"/api/vms/{id}{tail}", null, null))),
            (1, Gen.Select(vmRef, Gen.OneOf("", "/io")).Select((id, tail) => new ApiCase("GET", $"/api/vms/{id}{tail}", null, null, MayBeOk: true))));
        var migrationLookups = Gen.Select(idInPath, Gen.OneOf("", "/events"))
            .Select((id, tail) => new ApiCase("GET", $"/api/migrations/{id}{tail}", null, null));
        var streams = Gen.OneOf("/api/migrations/events", "/api/cluster/events")
            .Select(path => new ApiCase("GET", path, null, null, MayBeOk: true, Stream: true));
        var regionStats = Gen.Frequency(
            (4, idInPath.Select(type => new ApiCase("GET", $"/api/cluster/sharding/regions/{type}/stats", null, null))),
            (1, Gen.Const(new ApiCase("GET", "/api/cluster/sharding/regions/migration/stats", null, null, MayBeOk: true))));

        var createDomain = JsonObject(
                ("name", Gen.Frequency((4, JsonText), (1, Gen.Const("\"sdA\"")), (1, Gen.Guid.Select(g => $"\"{Marker}-{g:N}\"")))),
                ("path", Gen.Frequency((6, EscapingPath(cluster.Session.Storage, cluster.EscapeLink).Select(p => JsonSerializer.Serialize(p))), (1, JsonJunk))),
                ("capacityBytes", JsonNumber))
            .SelectMany(body => postBodyShape(body, "/api/domains"));

        var createVm = Gen.Frequency(
                // a host that does not exist: nothing is created, whatever the disks say
                (3, JsonObject(("name", JsonText), ("host", Gen.Frequency((3, JsonText), (1, JsonJunk))), ("disks", Disks(cluster, firstInvalid: false)))),
                // a host that exists, with a first disk that is wrong for sure
                (2, JsonObject(("name", Gen.Frequency((3, JsonText), (1, Gen.Const("\"vm1\"")))), ("host", Gen.Const("\"host-1\"")), ("disks", Disks(cluster, firstInvalid: true)))))
            .SelectMany(body => postBodyShape(body, "/api/vms"));

        var vmActions = Gen.Frequency(
            (3, Gen.SelectMany(idInPath, Gen.OneOf(Gen.OneOf("start", "stop", "snapshot", "verify", "io"), Text.Select(Uri.EscapeDataString)), JsonJunk,
                (id, action, body) => postBodyShape(body, $"/api/vms/{id}/{action}"))),
            // what exists, with a read-only action or a workload that is wrong for sure
            (1, vmRef.Select(vm => new ApiCase("POST", $"/api/vms/{vm}/verify", "{}", "application/json", MayBeOk: true))),
            (2, Gen.Select(vmRef, Gen.OneOf("-1", "-5", "1.5", "1e400", "\"fast\"", "null", "\"20MiB/s\""), JsonNumber)
                .Select((vm, rate, seconds) => new ApiCase("POST", $"/api/vms/{vm}/io", $"{{\"bytesPerSecond\": {rate}, \"seconds\": {seconds}}}", "application/json"))),
            (1, Gen.Select(vmRef, Text.Where(t => t is not ("start" or "stop" or "snapshot" or "verify" or "io")))
                .Select((vm, action) => new ApiCase("POST", $"/api/vms/{vm}/{Uri.EscapeDataString(action)}", "{}", "application/json"))));

        var startMigration = JsonObject(
                ("vm", Gen.Frequency((3, Id.Select(i => JsonSerializer.Serialize(i))), (2, Gen.Const(JsonSerializer.Serialize(cluster.VmId))), (1, JsonJunk))),
                ("disks", MigrationDisks(cluster)),
                ("strategy", Gen.Frequency((2, JsonText), (1, Gen.OneOf("\"pre-copy\"", "\"post-copy\"", "\"Post-Copy\"")))),
                ("bandwidthBytesPerSecond", JsonNumber),
                ("copyMode", Gen.Frequency((2, JsonText), (1, Gen.OneOf("\"background\"", "\"write-blocking\"")))),
                ("maxParallelDisks", JsonNumber))
            .SelectMany(body => postBodyShape(body, "/api/migrations"));

        var migrationActions = Gen.Frequency(
            (2, Gen.SelectMany(idInPath, JsonObject(("bytesPerSecond", JsonNumber)), (id, body) => postBodyShape(body, $"/api/migrations/{id}/speed"))),
            (3, Gen.SelectMany(idInPath, Gen.OneOf(Gen.OneOf("cancel", "resume", "abandon"), Text.Select(Uri.EscapeDataString)), JsonJunk,
                (id, action, body) => postBodyShape(body, $"/api/migrations/{id}/{action}"))));

        var clusterActions = Gen.SelectMany(
                Gen.Frequency((3, Gen.OneOf("leave", "down", "join")), (1, Text.Select(Uri.EscapeDataString))),
                Gen.OneOf<string>(
                    Text,
                    Gen.OneOf("akka.tcp://lsm@127.0.0.1", "akka.tcp://lsm@127.0.0.1:0", "akka.tcp://lsm@127.0.0.1:99999", "akka.tcp://other@127.0.0.1:4053",
                        "akka.udp://lsm@127.0.0.1:4053", "akka://lsm", "akka.tcp://lsm@:4053", "http://127.0.0.1:4053"),
                    Gen.Int[1, 65535].Select(port => $"akka.tcp://lsm@203.0.113.7:{port}")),
                (action, address) => JsonObject(("address", Gen.Frequency((5, Gen.Const(JsonSerializer.Serialize(address))), (1, JsonJunk))))
                    .Select(body => (action, body, address)))
            // a well-formed address of a node that does not exist: leave/down are refused, but join would be asked for
            .Where(t => !(t.action == "join" && t.address.StartsWith("akka.tcp://lsm@203.0.113.7:", StringComparison.Ordinal)))
            .SelectMany(t => postBodyShape(t.body, $"/api/cluster/{t.action}"));

        // Takes no input and downs unreachable members: only requests refused before it runs.
        var downUnreachable = Gen.OneOf(
            Gen.Const(new ApiCase("POST", "/api/cluster/down-unreachable", "address=x", "application/x-www-form-urlencoded")),
            Gen.Const(new ApiCase("POST", "/api/cluster/down-unreachable", "{}", null)),
            Gen.Const(new ApiCase("POST", "/api/cluster/down-unreachable", "{}", "application/json; charset=bogus")),
            Gen.Const(new ApiCase("POST", "/api/cluster/down-unreachable", "{\"x\": \"" + new string('x', 70 * 1024) + "\"}", "application/json")));

        var wrongMethods = Gen.Select(
                Gen.OneOf("PUT", "DELETE", "PATCH", "OPTIONS"),
                Gen.OneOf("/api/domains", "/api/vms", $"/api/vms/{cluster.VmId}", "/api/migrations", "/api/cluster", "/api/hosts", "/metrics", "/api/cluster/leave"))
            .Select((method, path) => new ApiCase(method, path, "{}", "application/json"));
        var unknownPaths = Gen.Select(Gen.OneOf("GET", "POST"), Text.Select(Uri.EscapeDataString), Gen.OneOf("/api/", "/api/vms/x/y/", "/api/cluster/sharding/", "/metrics/"))
            .Select((method, tail, prefix) => new ApiCase(method, prefix + tail + "/more", method == "POST" ? "{}" : null, method == "POST" ? "application/json" : null));
        var dotSegments = Gen.Frequency(
            (3, idInPath.Select(id => new ApiCase("GET", $"/api/vms/{id}/../../domains/%2e%2e/{id}", null, null))),
            (1, Gen.OneOf("/api/vms/%00", "/api/vms/a%00b/io", "/api/migrations/%00").Select(path => new ApiCase("GET", path, null, null))));

        return Gen.Frequency(
            (2, reads), (1, activeFilter), (3, vmLookups), (2, migrationLookups), (1, streams), (1, regionStats),
            (5, createDomain), (4, createVm), (4, vmActions), (6, startMigration), (4, migrationActions), (3, clusterActions),
            (1, downUnreachable), (1, wrongMethods), (1, unknownPaths), (1, dotSegments));
    }

    /// <summary>Raw in a path only what an HTTP client can send at all.</summary>
    private static bool SafeRaw(string id) => id.Length > 0 && id.Length < 2000 && id.All(c => c > ' ' && c < 0x7f && c is not ('?' or '#' or '%' or '\\'));

    /// <summary>A JSON body as a POST sends it, or spoilt: empty, cut short, any JSON, too big, not JSON by its content type.</summary>
    private static Func<string, string, Gen<ApiCase>> PostBody() => (body, target) =>
        Gen.Select(
                Gen.Frequency(
                    (12, Gen.Const(body)),
                    (1, Gen.Const("")),
                    (1, Gen.Const(body[..(body.Length / 2)])),
                    (1, JsonJunk),
                    (1, Gen.Const(body + ",")),
                    (1, Gen.Const("{\"pad\": \"" + new string('x', 70 * 1024) + "\", " + body.TrimStart('{')))),
                Gen.Frequency(
                    (14, Gen.Const<string?>("application/json")),
                    (1, Gen.Const((string?)null)),
                    (1, Gen.Const<string?>("text/plain")),
                    (1, Gen.Const<string?>("application/x-www-form-urlencoded")),
                    (1, Gen.Const<string?>("application/json; charset=bogus")),
                    (1, Gen.Const<string?>("application/json; charset=utf-16"))))
            .Select((sent, type) => new ApiCase("POST", target, sent, type));

    /// <summary>The disks of a new VM; with <paramref name="firstInvalid"/> the first is wrong for sure (so a real host creates nothing).</summary>
    private static Gen<string> Disks(HostileCluster cluster, bool firstInvalid)
    {
        var domain = Gen.Frequency((3, JsonText), (1, Gen.OneOf("\"sdA\"", JsonSerializer.Serialize(cluster.DomainBId))));
        var disk = JsonObject(("sizeBytes", JsonNumber), ("domain", domain), ("snapshots", JsonNumber), ("format", Gen.Frequency((2, JsonText), (1, Gen.OneOf("\"raw\"", "\"qcow2\"")))),
            ("preallocated", Gen.Frequency((2, Gen.OneOf("true", "false")), (1, JsonJunk))));
        var wrong = Gen.OneOf(
            "{\"sizeBytes\": -512, \"domain\": \"sdA\"}", "{\"sizeBytes\": 0, \"domain\": \"sdA\"}", "{\"sizeBytes\": 1000, \"domain\": \"sdA\"}",
            "{\"sizeBytes\": 67108864, \"domain\": \"sdA\", \"snapshots\": 33}", "{\"sizeBytes\": 67108864, \"domain\": \"sdA\", \"snapshots\": -1}",
            "{\"sizeBytes\": 67108864, \"domain\": \"sdA\", \"format\": \"vmdk\"}", "{\"sizeBytes\": 67108864, \"domain\": \"no-such-domain\"}",
            "{\"sizeBytes\": 67108864}", "null", "{\"sizeBytes\": 9223372036854775296, \"domain\": \"sdA\"}");
        var rest = Gen.Frequency((6, disk), (1, JsonJunk)).Array[0, 3];
        return firstInvalid
            ? Gen.Select(wrong, rest).Select((first, others) => "[" + string.Join(", ", others.Prepend(first)) + "]")
            : Gen.Frequency((5, rest.Select(items => "[" + string.Join(", ", items) + "]")), (1, JsonJunk));
    }

    /// <summary>The disks of a migration: never to sdB, so vm1's disk can never really move; to sdA (where it is), nowhere, or junk.</summary>
    private static Gen<string> MigrationDisks(HostileCluster cluster)
    {
        var image = Gen.Frequency((2, Id.Select(i => JsonSerializer.Serialize(i))), (2, Gen.Const(JsonSerializer.Serialize(cluster.ImageId))), (1, JsonJunk));
        var destination = Gen.Frequency((2, Id.Select(i => JsonSerializer.Serialize(i))), (2, Gen.Const(JsonSerializer.Serialize(cluster.DomainAId))), (1, JsonJunk));
        var disk = Gen.Frequency((6, JsonObject(("image", image), ("destination", destination))), (1, JsonJunk));
        return Gen.Frequency((6, disk.Array[0, 3].Select(items => "[" + string.Join(", ", items) + "]")), (1, JsonJunk));
    }
}
