using Akka.Actor;
using Akka.Hosting;
using LiveMigration.Coordinator.Hosting;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using LiveMigration.Shared.Protocol;

namespace LiveMigration.Coordinator.Api;

/// <summary>The outcome of an operator command: accepted, or refused with a code and a message that says why.</summary>
public sealed record CommandOutcome(bool Accepted, string Code, string Message, MigrationId? Migration = null);

/// <summary>
/// What the API does with a request: asks the inventory for the facts and a reservation of the disks,
/// hands the request to the migration's saga, and undoes the reservation when the saga refuses.
/// </summary>
public sealed class MigrationService(IRequiredActor<MigrationRegion> region, IRequiredActor<InventoryProxy> inventory, MigrationCatalog catalog)
{
    private static readonly TimeSpan AskTimeout = TimeSpan.FromSeconds(15);

    public async Task<CommandOutcome> StartAsync(MigrationRequest request, CancellationToken ct = default)
    {
        var id = MigrationId.New();
        var images = request.Disks.Select(d => d.Image).ToValueList();
        var facts = await inventory.ActorRef.Ask<ValidationFactsReply>(new GetValidationFacts(request.Vm, images), AskTimeout, ct);
        // Validated before anything is reserved, so a refused request journals nothing; the saga validates again when it
        // starts. A busy disk is left to the reservation, whose answer names the migration that holds it.
        if (MigrationDecider.RefusalOfStart(id, request, facts.Facts) is { } invalid && invalid.RefusalCode != MigrationErrorCodes.DiskBusy)
            return new CommandOutcome(false, invalid.RefusalCode!, invalid.RefusalMessage!);
        var reserved = await inventory.ActorRef.Ask<IInventoryMessage>(new ReserveDisks(id, request.Vm, images), AskTimeout, ct);
        // The disk's last migration may have finished a moment ago: its saga publishes the end, and the release of its disks
        // follows through the releaser. A client that starts the next move on that news would be refused for a migration
        // that is over: the release it is waiting for is done here (idempotent, the same places), and the reservation asked again.
        if (reserved is DisksBusy { Settling: false } stale && await FinishedOrNullAsync(stale.HeldBy, ct) is { } over)
        {
            await inventory.ActorRef.Ask<DisksReleased>(new ReleaseDisks(over.Id, Inventory.ReservationReleaser.PlacesOf(over)), AskTimeout, ct);
            reserved = await inventory.ActorRef.Ask<IInventoryMessage>(new ReserveDisks(id, request.Vm, images), AskTimeout, ct);
        }
        if (reserved is DisksNotReserved notReserved)
            return new CommandOutcome(false, notReserved.Code, notReserved.Message);
        if (reserved is DisksBusy busy)
            return new CommandOutcome(false, MigrationErrorCodes.DiskBusy, busy.Settling
                ? $"disk {busy.Image} was just moved by migration {busy.HeldBy} and its host has not reported it in its new place yet; try again in a moment"
                : $"disk {busy.Image} is already moving in migration {busy.HeldBy}");

        // The facts were read while another migration still held one of these disks (it ended, and its disks were released
        // before the reservation): they say the disk busy, and where it lay before that migration moved it. Read them again
        // now; the disks this migration holds now are no other's.
        var validated = facts.Facts;
        if (validated.DisksInActiveMigrations.Any(images.Contains))
        {
            var fresh = (await inventory.ActorRef.Ask<ValidationFactsReply>(new GetValidationFacts(request.Vm, images), AskTimeout, ct)).Facts;
            validated = fresh with { DisksInActiveMigrations = fresh.DisksInActiveMigrations.Where(i => !images.Contains(i)).ToValueList() };
        }

        var answer = await region.ActorRef.Ask<object>(new StartMigration(id, request, validated), AskTimeout, ct);
        if (answer is MigrationCommandRefused refused)
        {
            inventory.ActorRef.Tell(new ReleaseDisks(id));
            return new CommandOutcome(false, refused.Code, refused.Message);
        }
        catalog.Requested(id);
        return new CommandOutcome(true, "ACCEPTED", $"migration {id} started", id);
    }

    /// <summary>The migration's final view when it has finished; null when it runs, is unknown, or its saga did not answer in time.</summary>
    private async Task<MigrationView?> FinishedOrNullAsync(MigrationId id, CancellationToken ct)
    {
        try
        {
            return await GetAsync(id, ct) is { Finished: true } view ? view : null;
        }
        catch (AskTimeoutException)
        {
            return null;
        }
    }

    public Task<CommandOutcome> CancelAsync(MigrationId id, CancellationToken ct = default) => CommandAsync(new CancelMigration(id), ct);
    public Task<CommandOutcome> ResumeAsync(MigrationId id, CancellationToken ct = default) => CommandAsync(new ResumeMigration(id), ct);
    public Task<CommandOutcome> AbandonAsync(MigrationId id, CancellationToken ct = default) => CommandAsync(new AbandonMigration(id), ct);
    public Task<CommandOutcome> SetSpeedAsync(MigrationId id, long bytesPerSecond, CancellationToken ct = default) =>
        CommandAsync(new SetMigrationSpeed(id, bytesPerSecond), ct);

    /// <summary>The migration as the API shows it, or null when no migration with that id was ever recorded.</summary>
    public async Task<MigrationView?> GetAsync(MigrationId id, CancellationToken ct = default)
    {
        if (catalog.FinishedView(id) is { } finished) return finished;
        if (!await catalog.ExistsAsync(id, ct)) return null;
        var reply = await region.ActorRef.Ask<MigrationStateReply>(new GetMigrationState(id), AskTimeout, ct);
        if (!reply.Exists) return null;
        catalog.Finished(reply.View);
        return reply.View;
    }

    public Task<InventorySnapshot> InventoryAsync(CancellationToken ct = default) =>
        inventory.ActorRef.Ask<InventorySnapshot>(new GetInventory(), AskTimeout, ct);

    private async Task<CommandOutcome> CommandAsync(IMigrationCommand command, CancellationToken ct)
    {
        if (await GetAsync(command.MigrationId, ct) is null)
            return new CommandOutcome(false, MigrationErrorCodes.MigrationNotFound, $"no migration {command.MigrationId}");
        var answer = await region.ActorRef.Ask<object>(command, AskTimeout, ct);
        return answer switch
        {
            MigrationCommandRefused r => new CommandOutcome(false, r.Code, r.Message, command.MigrationId),
            MigrationCommandAccepted a => new CommandOutcome(true, "ACCEPTED", $"{a.Command}: {a.Status}", command.MigrationId),
            _ => new CommandOutcome(false, ErrorCodes.Conflict, $"unexpected answer {answer.GetType().Name}", command.MigrationId),
        };
    }
}
