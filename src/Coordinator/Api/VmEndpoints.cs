using LiveMigration.Coordinator.Hosts;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;
using static LiveMigration.Coordinator.Api.HostEndpoints;

namespace LiveMigration.Coordinator.Api;

/// <summary>
/// The VMs: list, show, create (and start), start, stop, live snapshot, and the guest workload on their drives
/// (start, status, verify). A VM is named by id or by its name when only one VM has it.
/// </summary>
public static class VmEndpoints
{
    public sealed record CreateVmBody(string? Name, string? Host, IReadOnlyList<NewDiskBody>? Disks);

    /// <param name="Format">The base's format, "raw" (the default) or "qcow2".</param>
    /// <param name="Preallocated">The base allocated whole (raw) or with all its tables (qcow2); sparse by default.</param>
    public sealed record NewDiskBody(long SizeBytes, string? Domain, int Snapshots = 0, string? Format = null, bool Preallocated = false);

    /// <param name="FlushIntervalMs">How often the guest flushes; null = the default (100 ms), 0 = never.</param>
    /// <param name="Fua">Every write with FUA.</param>
    public sealed record GuestIoBody(long BytesPerSecond, int Seconds = 0, int? FlushIntervalMs = null, bool Fua = false);

    public const int MaxVmPageSize = 5000;

    private const string IoBodyShape = "{\"bytesPerSecond\": N, \"seconds\": N, \"flushIntervalMs\": N (optional, 0 = never), \"fua\": true|false (optional)}";

    public static IEndpointRouteBuilder MapVmApi(this IEndpointRouteBuilder app)
    {
        static ManagementService Service(HttpContext http) => ManagementService.From(http.RequestServices);

        // ?limit=N&offset=M pages the list (all of it without a limit), ?q=TEXT keeps the VMs whose name, id or host has it
        app.MapGet("/api/vms", (string? limit, string? offset, string? q, HttpContext http, CancellationToken ct) => Guard(async () =>
        {
            int? pageSize = null;
            if (limit is not null)
                pageSize = int.TryParse(limit, out var n) && n is >= 1 and <= MaxVmPageSize ? n
                    : throw new OperationFailedException(ErrorCodes.InvalidArgument, $"limit must be a whole number from 1 to {MaxVmPageSize}, got '{ApiText.Clip(limit)}'");
            var from = 0;
            if (offset is not null && (!int.TryParse(offset, out from) || from < 0))
                throw new OperationFailedException(ErrorCodes.InvalidArgument, $"offset must be a whole number from 0, got '{ApiText.Clip(offset)}'");
            var page = await Service(http).VmsPageAsync(q, from, pageSize, ct);
            return Results.Ok(new { vms = page.Vms, total = page.Total, offset = page.Offset, limit = page.Limit });
        }));
        app.MapGet("/api/vms/{id}", (string id, HttpContext http, CancellationToken ct) => Guard(async () =>
            Results.Ok(await Service(http).VmAsync(id, ct))));
        app.MapPost("/api/vms", (CreateVmBody body, HttpContext http, CancellationToken ct) => Guard(async () =>
        {
            if (body.Disks?.Any(d => d is null) == true)
                throw new OperationFailedException(ErrorCodes.InvalidArgument, "disks: each entry is {\"sizeBytes\": N, \"domain\": NAME}, not null");
            var disks = body.Disks?.Select(d => new NewDiskRequest(d.SizeBytes, d.Domain ?? "", d.Snapshots, d.Format, d.Preallocated)).ToList();
            var vm = await Service(http).CreateVmAsync(body.Name, body.Host, disks, ct);
            return Results.Created($"/api/vms/{vm.Id}", vm);
        }));
        app.MapPost("/api/vms/{id}/{action}", (string id, string action, HttpContext http, CancellationToken ct) => Guard(async () =>
        {
            var service = Service(http);
            return action switch
            {
                "start" => Results.Ok(await service.StartVmAsync(id, ct)),
                "stop" => Results.Ok(await service.StopVmAsync(id, ct)),
                "snapshot" => Results.Ok(await service.SnapshotVmAsync(id, ct)),
                "verify" => Results.Ok(VerifyJson(await service.VerifyAsync(id, ct))),
                "io" => await StartIoAsync(id, http, service, ct),
                _ => throw new OperationFailedException("ACTION_NOT_FOUND", $"no VM action '{ApiText.Clip(action)}' (start, stop, snapshot, io, verify)"),
            };
        }));
        app.MapGet("/api/vms/{id}/io", (string id, HttpContext http, CancellationToken ct) => Guard(async () =>
            Results.Ok(IoJson(await Service(http).GuestIoAsync(id, ct)))));
        return app;
    }

    private static async Task<IResult> StartIoAsync(string id, HttpContext http, ManagementService service, CancellationToken ct)
    {
        GuestIoBody? body;
        try
        {
            body = await http.Request.ReadFromJsonAsync<GuestIoBody>(ct);
        }
        catch (System.Text.Json.JsonException e)
        {
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"the body must be {IoBodyShape}: {ApiText.JsonProblem(e)}");
        }
        if (body is null)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"the body must be {IoBodyShape}");
        var flushIntervalMs = body.FlushIntervalMs ?? StartGuestIo.DefaultFlushIntervalMs;
        var status = await service.StartGuestIoAsync(id, body.BytesPerSecond, body.Seconds, flushIntervalMs, body.Fua, ct);
        var message = $"guest I/O started on VM {status.Vm} at {(body.BytesPerSecond == 0 ? "full speed" : $"{body.BytesPerSecond} bytes/s")}"
                      + (body.Seconds > 0 ? $" for {body.Seconds} s" : " until stopped")
                      + (body.Fua ? ", every write with FUA (durable when acknowledged)"
                          : flushIntervalMs > 0 ? $", flushing every {flushIntervalMs} ms" : ", never flushing (nothing durable before the stop)");
        return Results.Json(new { message, vm = status.Vm.ToString() }, statusCode: StatusCodes.Status202Accepted);
    }

    private static object IoJson(GuestIoStatus s) => new
    {
        vm = s.Vm.ToString(), running = s.Running, bytesPerSecond = s.BytesPerSecond, seconds = s.Seconds, writes = s.Writes, bytes = s.Bytes,
        errors = s.Errors, elapsedSeconds = s.ElapsedSeconds, lastError = s.LastError, ledgerWrites = s.LedgerWrites,
        durableWrites = s.DurableWrites, flushIntervalMs = s.FlushIntervalMs, fua = s.Fua, flushes = s.Flushes,
    };

    private static object VerifyJson(GuestVerified v) => new
    {
        vm = v.Vm.ToString(), @checked = v.Checked, durableChecked = v.DurableChecked, lost = v.Lost, inDoubt = v.InDoubt, ok = v.Lost == 0,
        details = v.Details,
    };

}
